/**
 * Runtime instances with the review console (the core concern serves it), for the
 * console's tests: each instance runs in this process (`startRuntime`), with test actors
 * that change state on demand, and operators who sign in through the login form.
 * @module
 */
import type { ActorSpec } from "../../actors/runtime/types.ts";
import type { ConcernFactory } from "../../concerns/types.ts";
export { fragileSpec } from "../support/fragile_actor.ts";
import { loadConfig } from "../../concerns/config.ts";
import type { Role } from "../../lib/access.ts";
import { createUser } from "../../store/users.ts";
import { type Runtime, startRuntime } from "../../runtime.ts";
import { TEST_ADMIN_TOKEN } from "../support/auth.ts";

/** Shared secret key of the test instances. */
export const TEST_KEY: string = btoa(String.fromCharCode(...new Uint8Array(32).fill(7)));

/** A running instance with the console. */
export interface ConsoleNode {
  /** Instance id. */
  id: string;
  /** The runtime. */
  rt: Runtime;
  /** Its base URL. */
  url: string;
  /** Stops it (console streams first). Idempotent. */
  stop(): Promise<void>;
}

/** Options of {@linkcode startConsoleNode}. */
export interface ConsoleNodeOptions {
  /** PostgreSQL URL. */
  databaseUrl: string;
  /** Data directory (shared is fine: the key is given). */
  dataDir: string;
  /** Redis URL, for a cluster. */
  redisUrl?: string;
  /** Extra environment (RS_MAX_RESTARTS, …). */
  env?: Record<string, string>;
  /** Extra actors. */
  actors?: ActorSpec[];
  /** Concerns to run instead of concerns/mod.ts's default set (`core` always runs). */
  concerns?: Record<string, ConcernFactory>;
  /** Adds routes before the console's (fake concern endpoints). */
  routes?: (rt: Runtime) => void;
  /** The runtime's clock (ms; default `Date.now`): tests move it forward instead of sleeping. */
  now?: () => number;
}

/** Starts one instance and adds the console to its app before any request arrives. */
export async function startConsoleNode(
  id: string,
  options: ConsoleNodeOptions,
): Promise<ConsoleNode> {
  const config = loadConfig({
    env: {
      DATABASE_URL: options.databaseUrl,
      RS_SECRET_KEY: TEST_KEY,
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      RS_PORT: "0",
      RS_DATA_DIR: options.dataDir,
      RS_INSTANCE_ID: id,
      RS_KEY_PREFIX: "rscon:",
      RS_HEARTBEAT_MS: "200",
      RS_DEAD_AFTER_MS: "1000",
      ...(options.redisUrl ? { REDIS_URL: options.redisUrl } : {}),
      ...options.env,
    },
    args: [],
  });
  const rt = await startRuntime(config, {
    actors: options.actors,
    concerns: options.concerns,
    now: options.now,
  });
  options.routes?.(rt);
  let stopping: Promise<void> | null = null;
  return {
    id,
    rt,
    url: rt.url,
    stop() {
      stopping ??= rt.stop();
      return stopping;
    },
  };
}

/** Creates an account with `role` in the instance's database. */
export async function createAccount(
  node: ConsoleNode,
  account: { username: string; password: string; role: Role },
): Promise<void> {
  await createUser(node.rt.db.sql, {
    username: account.username,
    email: `${account.username}@example.com`,
    password: account.password,
  }, { role: account.role, hashing: { ln: 10 } });
}

/**
 * Signs in through the console's login form (`POST /login`, as a browser on this site
 * would) and returns the session cookie (`name=value`) to send with later requests.
 */
export async function signIn(url: string, login: string, password: string): Promise<string> {
  const res = await fetch(`${url}/login`, {
    method: "POST",
    redirect: "manual",
    headers: { "content-type": "application/x-www-form-urlencoded", origin: url },
    body: new URLSearchParams({ login, password, next: "/" }),
  });
  await res.body?.cancel();
  if (res.status !== 303) throw new Error(`POST /login answered ${res.status}, not 303`);
  const cookie = res.headers.get("set-cookie")?.split(";")[0];
  if (!cookie) throw new Error("POST /login set no cookie");
  return cookie;
}

/** One server-sent event. */
export interface SseEvent {
  /** Event name. */
  event: string;
  /** Parsed data. */
  data: Record<string, unknown>;
}

/** Reads server-sent events from `url` until `until` accepts the events so far. */
export async function readEvents(
  url: string,
  until: (seen: SseEvent[]) => boolean,
  options: {
    ms?: number;
    onEvent?: (event: SseEvent) => Promise<void> | void;
    headers?: Record<string, string>;
  } = {},
): Promise<SseEvent[]> {
  const ctl = new AbortController();
  const res = await fetch(url, { signal: ctl.signal, headers: options.headers });
  if (!res.ok || !res.body) throw new Error(`GET ${url} answered ${res.status}`);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const seen: SseEvent[] = [];
  let buf = "";
  const timer = setTimeout(() => ctl.abort(), options.ms ?? 15_000);
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const event = /^event: (.*)$/m.exec(chunk)?.[1] ?? "message";
        const data = JSON.parse(/^data: (.*)$/m.exec(chunk)?.[1] ?? "{}");
        seen.push({ event, data });
        await options.onEvent?.(seen[seen.length - 1]);
        if (until(seen)) return seen;
      }
    }
  } catch (err) {
    if (!ctl.signal.aborted) throw err;
  } finally {
    clearTimeout(timer);
    await reader.cancel().catch(() => {});
  }
  throw new Error(
    `expected events not seen; got ${
      JSON.stringify(seen.map((s) => s.event === "snapshot" ? s.data.view : s)).slice(0, 800)
    }`,
  );
}
