/**
 * Hostile-input fuzzer (issue 14, 6a): a running instance (main.ts as its own process, on
 * real PostgreSQL and Redis from tests/harness) is read for its `/openapi.json`, and
 * fast-check generates requests for every operation it describes — valid per the declared
 * schemas and hostile variants (huge strings, deeply nested JSON, wrong types, unicode,
 * `__proto__` / `constructor` keys, regex metacharacters, CR/LF in values and raw header
 * lines, huge query strings) — as an anonymous caller and with the admin token.
 *
 * It asserts that no answer is a 5xx other than a 503 with a declared error code, that the
 * instance never exits, and that `/health/live` keeps answering within 100 ms throughout.
 * The machine running the tests is busy, so the liveness probe (every 50 ms) is compared
 * with a control probe fired at the same moment at a trivial server in another process: the
 * same load slows both, a blocked event loop in the instance only the first. The typical
 * probe (the median) must answer within 100 ms of its control, and no probe may be 5 s later
 * than its control: the old backtracking pattern froze an instance for more than 10 s, while
 * on a host loaded 10x beyond its cores single probes of a healthy instance were seen up to
 * ~2 s late (the scrypt threads of concurrent logins and the console's rendering compete with
 * the event loop). p99 and the count of probes later than 100 ms are printed. The instance
 * hashes one password at a time with two waiting (RS_HASH_CONCURRENCY, RS_HASH_QUEUE): the
 * fuzzer's logins get 503 SERVER_BUSY beyond that, by design.
 *
 * Replay: `FUZZ_SEED=<seed> deno test -A tests/api/fuzz_test.ts` (the seed is printed on
 * failure); `FUZZ_RUNS=<n>` sets the requests per operation and caller (default 10).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ERROR_STATUS } from "../../lib/errors.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { TEST_ADMIN_TOKEN } from "../support/auth.ts";
import { startControl, timedGet } from "../support/control.ts";
import { launchInstance } from "../support/instance.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20261206);
const RUNS = Number(Deno.env.get("FUZZ_RUNS") ?? 10);
/** Extra latency of /health/live over its control probe that counts as late (ms). */
const LATE_MS = 100;
/** A single probe this much slower than its control is a freeze (ms). */
const FROZEN_MS = 5000;
/** Requests in flight at once (several operations fuzzed side by side). */
const PARALLEL = 4;
/** An answer (its status line and headers) must come within this (ms). */
const ANSWER_MS = 30_000;

/** 503 answers the runtime gives by design (its catalogue's codes with status 503). */
const DESIGNED_503 = new Set(
  Object.entries(ERROR_STATUS).filter(([, s]) => s === 503).map(([code]) => code),
);

// ---------------------------------------------------------------------------------------
// The OpenAPI document, as far as the fuzzer reads it

interface Schema {
  type?: string | string[];
  enum?: unknown[];
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  additionalProperties?: boolean | Schema;
  $ref?: string;
  anyOf?: Schema[];
  oneOf?: Schema[];
}

interface Parameter {
  in: "path" | "query" | "header" | "cookie";
  name: string;
  required?: boolean;
  schema?: Schema;
}

interface Operation {
  method: string;
  path: string;
  parameters: Parameter[];
  body: { type: string; schema: Schema } | null;
}

function operationsOf(doc: {
  paths: Record<string, Record<string, Record<string, unknown>>>;
  components?: { schemas?: Record<string, Schema>; parameters?: Record<string, Parameter> };
}): Operation[] {
  const resolve = <T>(x: T): T => {
    const ref = (x as { $ref?: string })?.$ref;
    if (!ref) return x;
    const [, , kind, name] = ref.split("/");
    return (doc.components as Record<string, Record<string, T>>)[kind][name];
  };
  const ops: Operation[] = [];
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const parameters = ((op.parameters ?? []) as Parameter[]).map(resolve);
      const content = (op.requestBody as { content?: Record<string, { schema: Schema }> })
        ?.content ?? {};
      const [type] = Object.keys(content);
      ops.push({
        method: method.toUpperCase(),
        path,
        parameters,
        body: type ? { type, schema: resolve(content[type].schema) } : null,
      });
    }
  }
  return ops.sort((a, b) => `${a.path} ${a.method}`.localeCompare(`${b.path} ${b.method}`));
}

// ---------------------------------------------------------------------------------------
// Values: valid per a schema, and hostile

/** A JavaScript RegExp from an OpenAPI pattern (zod may leave `/flags` at its end). */
function regexOf(pattern: string): RegExp | null {
  // The flags are dropped: fast-check generates from flag-less patterns (and the ids the
  // `i` flag concerns are generated in lower case, which matches either way).
  const m = /^(.*)\/([a-z]*)$/.exec(pattern);
  try {
    return m && m[1].endsWith("$") ? new RegExp(m[1]) : new RegExp(pattern);
  } catch {
    return null;
  }
}

function validString(s: Schema): fc.Arbitrary<string> {
  if (s.enum) return fc.constantFrom(...s.enum.map(String));
  const re = s.pattern ? regexOf(s.pattern) : null;
  const max = Math.min(s.maxLength ?? 40, 200);
  if (re) return fc.stringMatching(re).filter((x) => x.length <= (s.maxLength ?? Infinity));
  return fc.string({ minLength: s.minLength ?? 0, maxLength: Math.max(max, s.minLength ?? 0) });
}

function valid(schema: Schema | undefined, depth = 0): fc.Arbitrary<unknown> {
  if (!schema || depth > 4) return fc.jsonValue({ maxDepth: 2 });
  if (schema.enum) return fc.constantFrom(...schema.enum);
  const alternatives = schema.anyOf ?? schema.oneOf;
  if (alternatives) return fc.oneof(...alternatives.map((s) => valid(s, depth + 1)));
  const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
  if (types.length > 1) {
    return fc.oneof(...types.map((type) => valid({ ...schema, type }, depth + 1)));
  }
  switch (types[0]) {
    case "string":
      return validString(schema);
    case "integer":
      return fc.integer();
    case "number":
      return fc.double({ noNaN: true, noDefaultInfinity: true });
    case "boolean":
      return fc.boolean();
    case "null":
      return fc.constant(null);
    case "array":
      return fc.array(valid(schema.items, depth + 1), { maxLength: 5 });
    case "object": {
      const props = schema.properties ?? {};
      const model: Record<string, fc.Arbitrary<unknown>> = {};
      for (const [k, s] of Object.entries(props)) model[k] = valid(s, depth + 1);
      if (!Object.keys(model).length) {
        return fc.dictionary(fc.string({ maxLength: 12 }), fc.jsonValue({ maxDepth: 2 }), {
          maxKeys: 5,
        });
      }
      return fc.record(model, { requiredKeys: schema.required ?? [] });
    }
    default:
      return fc.jsonValue({ maxDepth: 2 });
  }
}

/** Strings that have hurt servers: regex bombs, CR/LF, unicode oddities, huge ones. */
const hostileString: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    "*".repeat(100) + "z",
    "?*".repeat(60) + "!",
    "(a+)+$",
    "((a*)*)*b",
    "^(([a-z])+.)+[A-Z]([a-z])+$",
    "a".repeat(50) + "!",
    ".*.*.*.*.*.*.*.*=",
    "[",
    "\\",
    "$(id)",
    "../../../../etc/passwd",
    "%00",
    "\u0000",
    "\ud800",
    "\u202e\u200b\ufeff",
    "ｓｔｒｅａｍ",
    "a\r\nSet-Cookie: fuzz=1",
    "x\r\nLocation: https://evil.example/",
    "/\\evil.example",
    "//evil.example/%2e%2e",
    "__proto__",
    "constructor",
    "toString",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "9".repeat(400),
    "-1",
    "1e309",
    "NaN",
  ),
  fc.string({ unit: "grapheme", maxLength: 60 }),
  fc.string({ unit: "binary", maxLength: 60 }),
  fc.integer({ min: 1_000, max: 300_000 }).map((n) => "A".repeat(n)),
);

/** JSON text nested `depth` deep (arrays or objects). */
function nested(depth: number, kind: "array" | "object"): string {
  return kind === "array"
    ? "[".repeat(depth) + "]".repeat(depth)
    : '{"a":'.repeat(depth) + "1" + "}".repeat(depth);
}

/** Values of the wrong kind, and prototype-polluting shapes. */
const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  hostileString,
  fc.constantFrom(
    null,
    true,
    0,
    -1,
    1e308,
    Number.MAX_SAFE_INTEGER + 2,
    [],
    {},
    [[[[[]]]]],
    JSON.parse('{"__proto__":{"admin":true,"role":"admin"}}'),
    JSON.parse('{"constructor":{"prototype":{"admin":true}}}'),
    { toString: "x", valueOf: 1, hasOwnProperty: "y" },
  ),
  fc.jsonValue({ maxDepth: 4 }),
);

/** A whole body text: a hostile value, or text no JSON schema expects. */
const hostileBodyText: fc.Arbitrary<string> = fc.oneof(
  hostileValue.map((v) => JSON.stringify(v) ?? "null"),
  fc.constantFrom(
    nested(5000, "array"),
    nested(3000, "object"),
    '{"a":1,"a":2,"__proto__":{"polluted":1}}',
    '{"constructor":{"prototype":{"polluted":1}},"toString":1}',
    "{",
    "",
    "\u0000\u0001",
    '"' + "x".repeat(200_000) + '"',
    JSON.stringify({ k: "v".repeat(100_000) }),
    JSON.stringify(Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`k${i}`, i]))),
  ),
);

/** Headers (fetch-legal: Latin-1, no CR/LF) a client may send anyway. */
const hostileHeaders: fc.Arbitrary<Record<string, string>> = fc.record({
  "x-forwarded-for": fc.constantFrom("1.2.3.4, 5.6.7.8", "not-an-ip", "::ffff:1.2.3.4", "0"),
  "x-device-fingerprint": fc.constantFrom("x".repeat(4000), "é", "*.*"),
  origin: fc.constantFrom("null", "https://evil.example", "http://127.0.0.1:1"),
  cookie: fc.constantFrom(
    "rs_session=" + "A".repeat(43),
    "__Host-rs_session=%00; rs_session=..",
    "rs_session=" + "x".repeat(6000),
  ),
  "user-agent": fc.constantFrom("", "ü".repeat(200), "Mozilla/5.0 " + "(".repeat(500)),
  accept: fc.constantFrom("*/*", "text/event-stream", "application/json;q=" + "9".repeat(100)),
}, { requiredKeys: [] });

/** One generated request. */
interface FuzzRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string;
}

function requestArb(op: Operation, token: string | null): fc.Arbitrary<FuzzRequest> {
  const params = op.parameters.filter((p) => p.in === "path" || p.in === "query");
  // A URL is at most 64 KiB on the wire (hyper refuses more before the instance sees it).
  const paramArb = (p: Parameter) =>
    fc.oneof(
      { weight: 3, arbitrary: valid(p.schema ?? { type: "string" }).map(String) },
      { weight: 2, arbitrary: hostileString.map((x) => x.slice(0, 12_000)) },
    );
  const pathValues = fc.record(
    Object.fromEntries(params.filter((p) => p.in === "path").map((p) => [p.name, paramArb(p)])),
  );
  const queryValues = fc.record(
    Object.fromEntries(params.filter((p) => p.in === "query").map((p) => [p.name, paramArb(p)])),
    { requiredKeys: [] },
  );
  const extraQuery = fc.oneof(
    { weight: 4, arbitrary: fc.constant("") },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        "a=" + "b".repeat(40_000),
        Array.from({ length: 3000 }, (_, i) => `p${i}=${i}`).join("&"),
        "__proto__[admin]=1&constructor[prototype][x]=1",
        "limit=1&limit=2&limit=" + "9".repeat(50),
        "%E0%A4%A=%ZZ&%",
        "next=%0d%0aSet-Cookie:%20fuzz=1",
      ),
    },
  );
  const body: fc.Arbitrary<{ type: string; text: string } | null> = op.body
    ? fc.oneof(
      {
        weight: 3,
        arbitrary: valid(op.body.schema).map((v) => ({
          type: op.body!.type,
          text: op.body!.type === "application/x-www-form-urlencoded"
            ? new URLSearchParams(
              Object.entries((v ?? {}) as Record<string, unknown>).map((
                [k, x],
              ) => [k, String(x)]),
            ).toString()
            : JSON.stringify(v),
        })),
      },
      { weight: 3, arbitrary: hostileBodyText.map((text) => ({ type: op.body!.type, text })) },
      {
        weight: 1,
        arbitrary: fc.record({
          type: fc.constantFrom("text/plain", "application/json; charset=utf-7", "", "x/y"),
          text: hostileBodyText,
        }),
      },
    )
    : fc.oneof(
      { weight: 5, arbitrary: fc.constant(null) },
      {
        weight: 1,
        arbitrary: hostileBodyText.map((text) => ({ type: "application/json", text })),
      },
    );
  return fc.record({
    path: pathValues,
    query: queryValues,
    extra: extraQuery,
    body,
    headers: fc.oneof({ weight: 3, arbitrary: fc.constant({}) }, {
      weight: 1,
      arbitrary: hostileHeaders,
    }),
  }).map(({ path, query, extra, body, headers }) => {
    let url = op.path.replaceAll(
      /\{(\w+)\}/g,
      (_, name) =>
        encodeURIComponent(((path as Record<string, string>)[name] ?? "x").toWellFormed()),
    );
    const qs = new URLSearchParams(
      Object.entries(query as Record<string, string>).map(([k, v]) => [k, v.toWellFormed()]),
    ).toString();
    const all = [qs, extra].filter(Boolean).join("&");
    if (all) url += `?${all}`;
    const h: Record<string, string> = { ...headers };
    if (token) h.authorization = `Bearer ${token}`;
    // Methods without a body carry none (fetch refuses one on GET).
    const withBody = body && !["GET", "HEAD"].includes(op.method);
    if (withBody && body.type) h["content-type"] = body.type;
    return { method: op.method, path: url, headers: h, body: withBody ? body.text : undefined };
  });
}

// ---------------------------------------------------------------------------------------
// Sending

/** Outcome of one request: its status and error code, or why there is none. */
interface Answer {
  status: number;
  code: string | null;
  headers: Headers;
}

async function send(base: string, req: FuzzRequest): Promise<Answer> {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), ANSWER_MS);
  try {
    const res = await fetch(base + req.path, {
      method: req.method,
      // A fresh connection each: one the server closed after refusing a request is never
      // reused for the next (a keep-alive race would look like a request without answer).
      headers: { ...req.headers, connection: "close" },
      body: req.body,
      redirect: "manual",
      signal: ctl.signal,
    });
    let code: string | null = null;
    if (res.headers.get("content-type")?.startsWith("text/event-stream")) {
      await res.body?.cancel(); // a stream that opened is all we wanted to know
    } else if (res.headers.get("content-type")?.startsWith("application/json")) {
      const text = await res.text();
      try {
        code = JSON.parse(text)?.error?.code ?? null;
      } catch { /* a JSON answer that is not JSON: the status says enough */ }
    } else {
      await res.arrayBuffer();
      // Pages (the sign-in form) carry the error's code as a header.
      code = res.headers.get("x-error-code");
    }
    return { status: res.status, code, headers: res.headers };
  } finally {
    clearTimeout(timer);
  }
}

/** Sends raw bytes (header lines fetch refuses to send) and returns the status code. */
async function sendRaw(host: string, port: number, text: string): Promise<number | null> {
  const conn = await Deno.connect({ hostname: host, port });
  const timer = setTimeout(() => conn.close(), ANSWER_MS);
  try {
    await conn.write(new TextEncoder().encode(text));
    const buf = new Uint8Array(256);
    let got = "";
    while (!got.includes("\r\n")) {
      const n = await conn.read(buf);
      if (n === null) break;
      got += new TextDecoder().decode(buf.subarray(0, n));
    }
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(got);
    return m ? Number(m[1]) : null; // null: the server closed the connection (also fine)
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
}

/** Bytes a request puts on the wire, roughly. */
function sizeOf(req: FuzzRequest): number {
  return req.path.length + (req.body?.length ?? 0) +
    Object.entries(req.headers).reduce((n, [k, v]) => n + k.length + v.length, 0);
}

/** Why an answer breaks the contract, or null. */
function violation(req: FuzzRequest, a: Answer): string | null {
  if (a.status >= 500 && !(a.status === 503 && a.code !== null && DESIGNED_503.has(a.code))) {
    return `${req.method} ${req.path.slice(0, 200)} answered ${a.status} ${a.code ?? ""}`;
  }
  for (const [name, value] of a.headers) {
    if (/fuzz=1|evil\.example\/$/.test(value) && name !== "content-security-policy") {
      return `${req.method} ${req.path.slice(0, 200)}: header ${name} carries injected text`;
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------
// The liveness probe and its control

interface ProbeStats {
  probes: number;
  late: number;
  worstExcessMs: number;
  p50: number;
  p99: number;
  failures: string[];
}

function startProbe(health: string, control: string): { stop(): Promise<ProbeStats> } {
  const excess: number[] = [];
  const failures: string[] = [];
  const pending = new Set<Promise<void>>();
  const timer = setInterval(() => {
    const p = (async () => {
      try {
        const [h, c] = await Promise.all([timedGet(health), timedGet(control)]);
        excess.push(h - c);
      } catch (err) {
        failures.push(`liveness probe failed: ${(err as Error).message}`);
      }
    })();
    pending.add(p);
    p.finally(() => pending.delete(p));
  }, 50);
  return {
    async stop() {
      clearInterval(timer);
      await Promise.all(pending);
      const sorted = [...excess].sort((a, b) => a - b);
      const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
      return {
        probes: excess.length,
        late: excess.filter((x) => x > LATE_MS).length,
        worstExcessMs: sorted.at(-1) ?? 0,
        p50: at(0.5) ?? 0,
        p99: at(0.99) ?? 0,
        failures,
      };
    },
  };
}

// ---------------------------------------------------------------------------------------

Deno.test("fuzzer: every route of /openapi.json, valid and hostile, anonymous and admin", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-fuzz-" });
  const control = await startControl();
  const node = await launchInstance({
    DATABASE_URL: await pg.createDatabase(),
    REDIS_URL: redis.url,
    RS_SECRET_KEY: btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))),
    RS_DATA_DIR: dataDir,
    RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    RS_KEY_PREFIX: `fuzz${crypto.randomUUID().slice(0, 8)}:`,
    RS_PORT: "0",
    BACKUP_SCHEDULE_FULL: "off",
    LOG_LEVEL: "error",
    RS_HASH_CONCURRENCY: "1",
    RS_HASH_QUEUE: "2",
  });
  let exited: Deno.CommandStatus | null = null;
  node.child.status.then((s) => exited = s);
  const base = node.url.replace(/\/$/, "");
  const { hostname, port } = new URL(base);
  try {
    const doc = await (await fetch(`${base}/openapi.json`)).json();
    const ops = operationsOf(doc);
    assert.ok(ops.length >= 40, `the document describes the routes (${ops.length})`);

    const probe = startProbe(`${base}/health/live`, `${control.url}/`);
    const started = performance.now();
    let requests = 0;
    const problems: string[] = [];
    const slowest: { ms: number; what: string }[] = [];
    const tasks: { op: Operation; caller: "anonymous" | "admin"; seed: number }[] = [];
    ops.forEach((op, i) => {
      tasks.push({ op, caller: "anonymous", seed: SEED + 2 * i });
      tasks.push({ op, caller: "admin", seed: SEED + 2 * i + 1 });
    });

    await t.step(`${ops.length} operations x 2 callers x ${RUNS} requests`, async () => {
      let next = 0;
      async function worker(): Promise<void> {
        while (next < tasks.length) {
          const { op, caller, seed } = tasks[next++];
          const token = caller === "admin" ? TEST_ADMIN_TOKEN : null;
          let seen = "";
          try {
            await fc.assert(
              fc.asyncProperty(requestArb(op, token), async (req) => {
                requests++;
                if (exited) throw new Error(`the instance exited (${exited.code})`);
                let answer: Answer;
                const t0 = performance.now();
                try {
                  answer = await send(base, req);
                } catch (err) {
                  // The HTTP layer may close the connection on an oversized request before
                  // reading all of it: a refusal, not a failure. Anything else is one.
                  const name = (err as Error).name;
                  if (name !== "AbortError" && sizeOf(req) > 4_000) return;
                  seen = `${req.method} ${req.path.slice(0, 120)} (${sizeOf(req)} bytes): no ` +
                    `answer (${(err as Error).message.slice(0, 200)})`;
                  throw err;
                } finally {
                  slowest.push({
                    ms: performance.now() - t0,
                    what: `${req.method} ${req.path.slice(0, 80)} (${sizeOf(req)} bytes, ${
                      JSON.stringify(req.body?.slice(0, 40) ?? "")
                    }, headers ${Object.keys(req.headers).join(",")})`,
                  });
                  slowest.sort((a, b) => b.ms - a.ms).splice(8);
                }
                const wrong = violation(req, answer);
                if (wrong) {
                  seen = wrong;
                  throw new Error(wrong);
                }
              }),
              { seed, numRuns: RUNS, endOnFailure: true },
            );
          } catch (err) {
            const why = seen || (err as Error).message.slice(0, 300);
            problems.push(
              `${op.method} ${op.path} as ${caller} (FUZZ_SEED=${SEED}, seed ${seed}): ${why}`,
            );
          }
        }
      }
      await Promise.all(Array.from({ length: PARALLEL }, worker));
      for (const p of problems) console.error(p);
      assert.deepEqual(problems, [], `replay with FUZZ_SEED=${SEED}`);
    });

    await t.step("raw header lines with CR, LF and NUL are refused, never a 5xx", async () => {
      const lines = [
        "X-Fuzz: a\rSet-Cookie: fuzz=1",
        "X-Fuzz: a\nSet-Cookie: fuzz=1",
        "X-Fuzz: \u0000",
        "Authorization: Bearer " + "A".repeat(20_000),
        "Cookie: rs_session=\r",
        `X-Big: ${"b".repeat(100_000)}`,
      ];
      for (const line of lines) {
        for (const path of ["/health/live", "/auth/me", "/state/stream?pattern=*"]) {
          requests++;
          const status = await sendRaw(
            hostname,
            Number(port),
            `GET ${path} HTTP/1.1\r\nHost: ${hostname}\r\n${line}\r\nConnection: close\r\n\r\n`,
          );
          assert.ok(
            status === null || status < 500,
            `raw ${JSON.stringify(line.slice(0, 40))} on ${path}: ${status}`,
          );
        }
      }
    });

    const durationMs = performance.now() - started;
    const stats = await probe.stop();
    console.log(
      `fuzzer: ${requests} requests over ${ops.length} operations in ${
        (durationMs / 1000).toFixed(1)
      } s (seed ${SEED}, ${RUNS} per operation and caller); liveness probes: ${stats.probes}, ` +
        `excess over control p50 ${stats.p50.toFixed(1)} ms, p99 ${stats.p99.toFixed(1)} ms, ` +
        `worst ${stats.worstExcessMs.toFixed(1)} ms, late ${stats.late}`,
    );
    console.log(
      `slowest requests:\n${slowest.map((s) => `  ${s.ms.toFixed(0)} ms ${s.what}`).join("\n")}`,
    );

    await t.step("the instance is alive and /health/live kept answering in time", async () => {
      assert.equal(exited, null, "the instance did not exit");
      assert.equal(
        await fetch(`${base}/health/live`).then(async (r) => {
          await r.body?.cancel();
          return r.status;
        }),
        200,
      );
      assert.deepEqual(stats.failures.slice(0, 5), [], "every liveness probe answered");
      assert.ok(stats.probes > 0, "the probe ran");
      assert.ok(
        stats.worstExcessMs < FROZEN_MS,
        `no freeze: the worst probe took ${stats.worstExcessMs.toFixed(0)} ms longer than its ` +
          `control (FUZZ_SEED=${SEED})`,
      );
      assert.ok(
        stats.p50 < LATE_MS,
        `/health/live typically answered within ${LATE_MS} ms of its control: the median ` +
          `probe was ${stats.p50.toFixed(0)} ms later (FUZZ_SEED=${SEED})`,
      );
    });
  } finally {
    const status = await node.stop();
    await control.stop();
    await Deno.remove(dataDir, { recursive: true });
    if (!status.success && status.signal !== "SIGTERM" && status.code !== 0) {
      console.error(node.stderr().slice(-4000));
    }
  }
});
