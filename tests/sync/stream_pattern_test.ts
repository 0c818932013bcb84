/**
 * A subscription pattern is client input: `GET /state/stream?pattern=` is open to every
 * reader of state (a token with `state:read`).
 * An instance process with two event streams whose patterns are of the maximum length and
 * as adversarial as a backtracking matcher allows keeps answering `/health/live` promptly
 * while state changes flow, the stream whose pattern matches still gets every change, and
 * a pattern over the bound or with a foreign character is refused before any stream opens.
 * The number of open streams, and the size of write bodies, are bounded too.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { createLocalTransport } from "../../actors/runtime/transport.ts";
import { createSyncNode } from "../../actors/sync/node.ts";
import { addSyncRoutes } from "../../api/sync.ts";
import { MAX_PATTERN_LENGTH } from "../../lib/channel_pattern.ts";
import { createLocalBus } from "../../store/bus.ts";
import { conflictStore } from "../../store/sync.ts";
import type { Sql } from "../../store/types.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { type ControlServer, excessOver, startControl } from "../support/control.ts";
import { type InstanceProcess, launchInstance } from "../support/instance.ts";
import { type SseReader, sseReader } from "../support/sse.ts";
import { until } from "./support.ts";
import { testApp } from "../support/auth.ts";

const KEY = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
const TOKEN = "pattern-test-token-0123456789";
/** The write token reads state too (state:read). */
const READER = { headers: { authorization: `Bearer ${TOKEN}` } };
/**
 * The bound: a live instance answers its liveness probe within this, measured as
 * the time beyond a control probe fired at the same moment at a trivial server in another
 * process (tests/support/control.ts), so a busy test host slows both and only a stalled
 * instance shows. The typical (median) probe must keep to it; no single probe may exceed its
 * control by FROZEN_MS: a backtracking matcher on these patterns never answers at all, while
 * scheduling on a host loaded far beyond its cores delays single probes by a second or so.
 */
const LIVE_MS = 100;
/** A probe this much slower than its control means a stalled instance. */
const FROZEN_MS = 2000;
/** State changes, each on a channel of its own so every one is matched afresh. */
const CHANGES = 40;

/**
 * No channel ends in `z`, so a backtracking matcher tries every way of spreading the
 * channel over the stars before it gives up: exponential in their number.
 */
const NEVER = "*".repeat(MAX_PATTERN_LENGTH - 1) + "z";
/** Matches every `<type>.changed`, but a backtracking matcher finds that out slowly. */
const EVERY_CHANGE = "*".repeat(MAX_PATTERN_LENGTH - ".changed".length) + ".changed";

/** A fetch that gives up after `ms`; resolves to the response or to why it failed. */
async function fetchWithin(
  url: string,
  ms: number,
  init: RequestInit = {},
): Promise<{ res: Response; ms: number } | { error: string; ms: number }> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), ms);
  const t0 = performance.now();
  try {
    const res = await fetch(url, { ...init, signal: abort.signal });
    // The body counts: the answer is complete only once it has been read.
    const text = await res.text();
    return { res: new Response(text, { status: res.status }), ms: performance.now() - t0 };
  } catch (err) {
    const why = abort.signal.aborted ? `no answer within ${ms} ms` : String(err);
    return { error: why, ms: performance.now() - t0 };
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("an adversarial subscription pattern cannot stall the instance", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const dbUrl = await pg.createDatabase();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-sync-pattern-" });
  let instance: InstanceProcess | null = null;
  let control: ControlServer | null = null;
  let stalled = false;
  const streams: SseReader[] = [];
  try {
    instance = await launchInstance({
      DATABASE_URL: dbUrl,
      REDIS_URL: redis.url,
      RS_SECRET_KEY: KEY,
      RS_DATA_DIR: dataDir,
      RS_KEY_PREFIX: "rspat:",
      RS_INSTANCE_ID: "pattern-a",
      RS_PORT: "0",
      RS_STATE_WRITE_TOKEN: TOKEN,
      LOG_LEVEL: "error",
    });
    const url = instance.url;
    control = await startControl();

    await t.step("patterns over the bound or with other characters are refused", async () => {
      for (
        const [pattern, why] of [
          ["a".repeat(MAX_PATTERN_LENGTH + 1), /at most 128 characters/],
          ["stream.(a|b)", /"\(" at position 7/],
          ["", /empty/],
        ] as const
      ) {
        const res = await fetch(
          `${url}/state/stream?pattern=${encodeURIComponent(pattern)}`,
          READER,
        );
        const body = await res.json();
        assert.equal(res.status, 400, JSON.stringify(body));
        assert.equal(body.error.code, "VALIDATION_FAILED");
        assert.match(body.error.message, why);
      }
    });

    await t.step("/health/live keeps answering promptly while state changes flow", async () => {
      // Before the streams: what this machine gives, for the failure message.
      const warm = await fetchWithin(`${url}/health/live`, 5_000);
      assert.ok("res" in warm, `the instance answers at all: ${JSON.stringify(warm)}`);
      for (const pattern of [NEVER, EVERY_CHANGE]) {
        const res = await fetch(
          `${url}/state/stream?pattern=${encodeURIComponent(pattern)}`,
          READER,
        );
        assert.equal(res.status, 200, `the stream of a ${pattern.length}-character pattern opens`);
        const sse = sseReader(res);
        streams.push(sse);
        assert.equal((await sse.next("the hello event")).event, "hello");
      }
      const slow: string[] = [];
      const excess: number[] = [];
      for (let i = 0; i < CHANGES && !slow.length; i++) {
        // Not awaited yet: the probe runs while the instance handles the change.
        const patch = fetchWithin(`${url}/state/t${i}/1`, 10_000, {
          method: "PATCH",
          headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
          body: JSON.stringify({ n: i }),
        });
        try {
          const late = await excessOver(`${url}/health/live`, control!);
          excess.push(late);
          if (late >= FROZEN_MS) {
            slow.push(`change ${i + 1}: /health/live took ${late.toFixed(0)} ms beyond control`);
          }
        } catch (err) {
          slow.push(`change ${i + 1}: /health/live ${(err as Error).message}`);
        }
        const done = await patch;
        if (!("res" in done) || done.res.status !== 200) {
          slow.push(`change ${i + 1}: PATCH ${"res" in done ? done.res.status : done.error}`);
        }
      }
      const sorted = [...excess].sort((a, b) => a - b);
      const median = sorted[sorted.length >> 1] ?? 0;
      if (median >= LIVE_MS) {
        slow.push(`the median probe took ${median.toFixed(0)} ms beyond its control`);
      }
      stalled = slow.length > 0;
      assert.deepEqual(
        slow,
        [],
        `the instance stalled (liveness took ${warm.ms.toFixed(1)} ms before the streams; ` +
          `beyond control: median ${median.toFixed(0)} ms, worst ${
            (sorted.at(-1) ?? 0).toFixed(0)
          } ms): ${slow.join("; ")}`,
      );
    });

    await t.step({
      name: "the matching stream got every change, in order",
      ignore: stalled,
      fn: async () => {
        const seen: string[] = [];
        while (seen.length < CHANGES) {
          const e = await streams[1].next(`change ${seen.length + 1} of ${CHANGES}`);
          if (e.event === "change") seen.push((e.data as { channel: string }).channel);
        }
        assert.deepEqual(seen, Array.from({ length: CHANGES }, (_, i) => `t${i}.changed`));
      },
    });

    await t.step("event streams are capped per instance; write bodies are bounded", async () => {
      // In this process, with a cap of 2: the instance above keeps the default (1000).
      const sql = postgres(dbUrl, { max: 1, onnotice: () => {} }) as Sql;
      const bus = createLocalBus();
      const node = createSyncNode({
        instanceId: "capped",
        sql,
        bus,
        transport: createLocalTransport({
          instanceId: "capped",
          bus,
          actors: { spec: () => undefined, ref: () => undefined },
        }),
      });
      const app = testApp({ settings: { stateWriteToken: TOKEN } });
      addSyncRoutes(app, { node, conflicts: conflictStore(sql), maxStreams: 2 });
      const mine: SseReader[] = [];
      try {
        for (const n of [1, 2]) {
          const res = await app.request("/state/stream?pattern=*", READER);
          assert.equal(res.status, 200, `stream ${n} opens`);
          mine.push(sseReader(res));
          assert.equal((await mine[mine.length - 1].next(`hello of stream ${n}`)).event, "hello");
        }
        const third = await app.request("/state/stream?pattern=*", READER);
        if (third.status === 200) {
          mine.push(sseReader(third));
          assert.fail("a third stream opened beyond the cap of 2");
        }
        const refused = await third.json();
        assert.equal(third.status, 429, JSON.stringify(refused));
        assert.equal(refused.error.code, "RATE_LIMITED");
        assert.match(refused.error.message, /already serves 2/);
        // A client that leaves frees its place once the server notices.
        await mine.shift()!.cancel();
        await until(async () => {
          const res = await app.request("/state/stream?pattern=*", READER);
          if (res.status !== 200) {
            await res.body?.cancel();
            return false;
          }
          mine.push(sseReader(res));
          return true;
        }, "a place freed by the stream that ended");

        const big = JSON.stringify({ title: "x".repeat(100_000) });
        const json = { "content-type": "application/json" };
        const anon = await app.request("/state/stream/1", {
          method: "PATCH",
          body: big,
          headers: json,
        });
        assert.equal(anon.status, 401, "the caller is checked before the body is read");
        await anon.body?.cancel();
        const auth = { ...json, authorization: `Bearer ${TOKEN}` };
        const sized = await app.request("/state/stream/1", {
          method: "PATCH",
          body: big,
          headers: { ...auth, "content-length": String(big.length) },
        });
        const sizedBody = await sized.json();
        assert.equal(sized.status, 400, JSON.stringify(sizedBody));
        assert.match(sizedBody.error.message, /exceeds 65536 bytes/);
        // Without a length up front the body is counted as it arrives.
        const chunked = await app.request(
          new Request("http://localhost/state/stream/1", {
            method: "PATCH",
            body: new Blob([big]).stream(),
            headers: auth,
          }),
        );
        const chunkedBody = await chunked.json();
        assert.equal(chunked.status, 400, JSON.stringify(chunkedBody));
        assert.match(chunkedBody.error.message, /exceeds 65536 bytes/);
        assert.equal(node.getSnapshot("stream", 1), null, "nothing was applied");
      } finally {
        for (const s of mine) await s.cancel();
        await node.close();
        await sql.end();
      }
    });
  } finally {
    for (const s of streams) await s.cancel();
    // A stalled process never runs its SIGTERM handler.
    await instance?.stop(stalled ? "SIGKILL" : "SIGTERM");
    await control?.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
