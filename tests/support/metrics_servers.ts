/**
 * Throw-away time-series servers for the metrics tests and bench, built on the harness's
 * server life cycle (tests/harness/_server.ts): a free port on 127.0.0.1, their own temp
 * directories, a direct child of the test process stopped by pid, removed on dispose.
 *
 * - {@linkcode startVictoriaMetrics}: Debian's `victoria-metrics`, which accepts the
 *   InfluxDB 2.x `/api/v2/write` requests unchanged and answers PromQL. Started with
 *   `-search.disableCache` and `-search.latencyOffset=0s` so a read right after
 *   `flush()` (`/internal/force_flush`) sees everything written.
 * - {@linkcode startInfluxDb}: Debian's `influxd` 1.6.7 with a generated config (meta,
 *   data and WAL directories of its own, HTTP and RPC on free ports); it serves the v1
 *   API: `/write` and InfluxQL over `/query`.
 *
 * Each server runs under `setpriv --pdeathsig KILL`, so it dies with the test process even
 * when that is killed (the harness's leftover sweep only knows PostgreSQL and Redis).
 *
 * @example
 * ```ts
 * await using vm = await startVictoriaMetrics();
 * await using influx = await startInfluxDb();
 * const db = await influx.createDatabase();
 * ```
 * @module
 */
import { serverDir } from "../harness/_base.ts";
import { HarnessError, randomHex } from "../harness/_process.ts";
import { ManagedServer } from "../harness/_server.ts";
import { freePort } from "../harness/ports.ts";
import { until, type UntilOptions } from "./instance.ts";

/** A running (or stopped) throw-away server. */
export interface MetricsServer extends AsyncDisposable {
  /** HTTP port on 127.0.0.1. */
  readonly port: number;
  /** `http://127.0.0.1:PORT`. */
  readonly url: string;
  /** Pid of the current run. */
  readonly pid: number;
  /** Its directory (data and log). */
  readonly dir: string;
  /** True while the process runs. */
  readonly running: boolean;
  /** Graceful stop (SIGTERM), waiting for the exit; idempotent. */
  stop(): Promise<void>;
  /** Sends `signal` (default SIGKILL); for a fatal signal waits for the exit. */
  kill(signal?: Deno.Signal): Promise<void>;
  /** Starts again on the same port and data; waits until it answers. */
  start(): Promise<void>;
}

/** A throw-away VictoriaMetrics. */
export interface VictoriaMetricsServer extends MetricsServer {
  /** Makes everything ingested so far searchable (`/internal/force_flush`). */
  flush(): Promise<void>;
  /** Runs an instant PromQL query at `timeMs` (default now); returns the `data.result` array. */
  query(
    promql: string,
    timeMs?: number,
  ): Promise<{ metric: Record<string, string>; value: [number, string] }[]>;
  /** Label sets of the series matching a selector. */
  series(selector: string): Promise<Record<string, string>[]>;
}

/** A throw-away InfluxDB 1.6.7. */
export interface InfluxDbServer extends MetricsServer {
  /** Creates a database (random name if omitted) and returns its name. */
  createDatabase(name?: string): Promise<string>;
  /** Runs InfluxQL; returns the parsed JSON answer. */
  query(influxql: string, options?: { db?: string; epoch?: "ms" }): Promise<InfluxAnswer>;
  /** Posts line protocol to `/write` (precision ms); throws with the server's message on failure. */
  write(db: string, lines: string): Promise<void>;
}

/** The JSON an InfluxQL query answers with. */
export interface InfluxAnswer {
  /** One result per statement. */
  results: {
    statement_id: number;
    error?: string;
    series?: {
      name: string;
      tags?: Record<string, string>;
      columns: string[];
      values: unknown[][];
    }[];
  }[];
  /** A request-level error. */
  error?: string;
}

const PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"];

/** True when `url` answers with a 2xx within `timeoutMs`. */
async function answers(url: string, timeoutMs = 1000): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    await res.body?.cancel();
    return res.ok;
  } catch {
    return false;
  }
}

async function checked(res: Response, what: string): Promise<string> {
  const text = await res.text();
  if (!res.ok) {
    throw new HarnessError("COMMAND_FAILED", `${what} failed with HTTP ${res.status}: ${text}`);
  }
  return text;
}

class VictoriaMetricsNode extends ManagedServer implements VictoriaMetricsServer {
  protected readonly label: string = "VictoriaMetrics";
  protected readonly stopSignal: Deno.Signal = "SIGTERM";
  protected readonly bindError = /address already in use|cannot start http server/i;

  constructor(dir: string, port: number) {
    super(dir, { port, logName: "victoria-metrics.log" });
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  launchNew(): Promise<void> {
    return this.exclusive(() => this.launch({ retryPort: true }));
  }

  protected argv(port: number): string[] {
    return [
      ...PDEATHSIG,
      "victoria-metrics",
      `-storageDataPath=${this.dir}/data`,
      `-httpListenAddr=127.0.0.1:${port}`,
      "-search.disableCache",
      "-search.latencyOffset=0s",
      "-retentionPeriod=100y",
      "-loggerLevel=ERROR",
      // Idle keep-alive connections must not hold a stop up for the default 7 s.
      "-http.maxGracefulShutdownDuration=300ms",
    ];
  }

  protected isReady(): Promise<boolean> {
    return answers(`${this.url}/health`);
  }

  async flush(): Promise<void> {
    await checked(await fetch(`${this.url}/internal/force_flush`), "force_flush");
  }

  async query(promql: string, timeMs?: number) {
    const body = new URLSearchParams({ query: promql });
    if (timeMs !== undefined) body.set("time", String(timeMs / 1000));
    const text = await checked(
      await fetch(`${this.url}/api/v1/query`, { method: "POST", body }),
      "PromQL query",
    );
    return JSON.parse(text).data.result;
  }

  async series(selector: string): Promise<Record<string, string>[]> {
    const body = new URLSearchParams({ "match[]": selector, start: "0" });
    const text = await checked(
      await fetch(`${this.url}/api/v1/series`, { method: "POST", body }),
      "series query",
    );
    return JSON.parse(text).data;
  }
}

class InfluxNode extends ManagedServer implements InfluxDbServer {
  protected readonly label: string = "InfluxDB";
  protected readonly stopSignal: Deno.Signal = "SIGTERM";
  protected readonly bindError = /address already in use/i;

  constructor(dir: string, port: number) {
    super(dir, { port, logName: "influxd.log" });
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  launchNew(): Promise<void> {
    return this.exclusive(() => this.launch({ retryPort: true }));
  }

  protected override async beforeLaunch(): Promise<void> {
    // The RPC (backup) listener needs a port of its own; a fresh one each launch.
    const rpc = await freePort();
    await Deno.writeTextFile(
      `${this.dir}/influxdb.conf`,
      [
        "reporting-disabled = true",
        `bind-address = "127.0.0.1:${rpc}"`,
        "[meta]",
        `  dir = "${this.dir}/meta"`,
        "[data]",
        `  dir = "${this.dir}/data"`,
        `  wal-dir = "${this.dir}/wal"`,
        "  query-log-enabled = false",
        "[http]",
        "  enabled = true",
        `  bind-address = "127.0.0.1:${this.port}"`,
        "  log-enabled = false",
        "[monitor]",
        "  store-enabled = false",
        "[retention]",
        "  enabled = false",
        "[continuous_queries]",
        "  enabled = false",
        "[logging]",
        '  level = "error"',
        "  suppress-logo = true",
        "",
      ].join("\n"),
    );
  }

  protected argv(): string[] {
    return [...PDEATHSIG, "influxd", "-config", `${this.dir}/influxdb.conf`];
  }

  protected isReady(): Promise<boolean> {
    return answers(`${this.url}/ping`);
  }

  async createDatabase(name = `rs_${randomHex(4)}`): Promise<string> {
    if (!/^\w+$/.test(name)) {
      throw new HarnessError("INVALID_ARGUMENT", `Invalid database name: ${name}`);
    }
    const answer = await this.query(`CREATE DATABASE "${name}"`);
    const error = answer.error ?? answer.results[0]?.error;
    if (error) throw new HarnessError("COMMAND_FAILED", `CREATE DATABASE failed: ${error}`);
    return name;
  }

  async query(influxql: string, options: { db?: string; epoch?: "ms" } = {}) {
    const body = new URLSearchParams({ q: influxql });
    if (options.db) body.set("db", options.db);
    if (options.epoch) body.set("epoch", options.epoch);
    const res = await fetch(`${this.url}/query`, { method: "POST", body });
    return JSON.parse(await res.text()) as InfluxAnswer;
  }

  async write(db: string, lines: string): Promise<void> {
    await checked(
      await fetch(`${this.url}/write?db=${encodeURIComponent(db)}&precision=ms`, {
        method: "POST",
        body: lines,
      }),
      "InfluxDB write",
    );
  }
}

/** Starts a fresh VictoriaMetrics on a free port and waits until /health answers. */
export async function startVictoriaMetrics(): Promise<VictoriaMetricsServer> {
  const dir = await serverDir("victoria");
  const server = new VictoriaMetricsNode(dir, await freePort());
  try {
    await server.launchNew();
    return server;
  } catch (err) {
    await server[Symbol.asyncDispose]();
    throw err;
  }
}

/** Starts a fresh InfluxDB 1.6.7 on free ports and waits until /ping answers. */
export async function startInfluxDb(): Promise<InfluxDbServer> {
  const dir = await serverDir("influxdb");
  const server = new InfluxNode(dir, await freePort());
  try {
    await server.launchNew();
    return server;
  } catch (err) {
    await server[Symbol.asyncDispose]();
    throw err;
  }
}

/** Polls `check` until it returns true; throws after `ms`, naming `what` (see `until`). */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  options: UntilOptions,
): Promise<void> {
  await until(check, options);
}
