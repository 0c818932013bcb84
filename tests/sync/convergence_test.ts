/**
 * Three runtime processes on one PostgreSQL and one Redis, with randomised (fast-check)
 * concurrent updates through `PATCH /state/...` on all three: after each run every
 * instance holds identical state, and counters equal the sum of every increment — also
 * when Redis is restarted (all pub/sub traffic and every Redis key lost) in the middle of
 * the run, and when one process is frozen (SIGSTOP) and resumed (SIGCONT).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { canonicalJson } from "../../lib/crdt.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { type InstanceProcess, launchInstance, until } from "../support/instance.ts";

const KEY = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
const TOKEN = "convergence-token-0123456789";
/** The write token reads state too (state:read). */
const READER = { headers: { authorization: `Bearer ${TOKEN}` } };
const NAMES = ["conv-a", "conv-b", "conv-c"];

/** One update: which instance applies it, to which entity, what. */
interface Op {
  node: number;
  entity: number;
  kind: "title" | "inc" | "dec" | "peak" | "owner";
  value: number;
}

const opArb: fc.Arbitrary<Op> = fc.record({
  node: fc.integer({ min: 0, max: 2 }),
  entity: fc.integer({ min: 1, max: 3 }),
  kind: fc.constantFrom("title", "inc", "inc", "dec", "peak", "owner"),
  value: fc.integer({ min: 1, max: 50 }),
});

function deltaOf(op: Op): Record<string, unknown> {
  switch (op.kind) {
    case "title":
      return { title: `t${op.value}` };
    case "inc":
      return { viewers: { inc: op.value } };
    case "dec":
      return { viewers: { dec: op.value } };
    case "peak":
      return { peakViewers: op.value };
    case "owner":
      return { userId: op.value };
  }
}

interface Entity {
  state: Record<string, unknown>;
}

Deno.test("three processes converge under concurrent updates, a Redis restart and SIGSTOP", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const dbUrl = await pg.createDatabase();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-sync-conv-" });
  const env = (id: string) => ({
    DATABASE_URL: dbUrl,
    REDIS_URL: redis.url,
    RS_SECRET_KEY: KEY,
    RS_DATA_DIR: dataDir,
    RS_KEY_PREFIX: "rsconv:",
    RS_INSTANCE_ID: id,
    RS_PORT: "0",
    RS_LEASE_TTL_MS: "1000",
    RS_STATE_WRITE_TOKEN: TOKEN,
    RS_SYNC_HEADS_MS: "200",
    RS_SYNC_SNAPSHOT_MS: "1000",
    RS_SYNC_REPAIR_RETRY_MS: "50",
    LOG_LEVEL: "error",
  });
  const nodes: InstanceProcess[] = await Promise.all(NAMES.map((n) => launchInstance(env(n))));
  let run = 0;

  async function patch(node: number, id: string, delta: Record<string, unknown>): Promise<void> {
    const res = await fetch(`${nodes[node].url}/state/stream/${id}`, {
      method: "PATCH",
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify(delta),
    });
    const body = await res.text();
    assert.equal(res.status, 200, body);
  }

  /** Applies ops: each instance's own in order, the instances concurrently. */
  async function apply(ops: Op[], prefix: string, skip?: number): Promise<void> {
    const lanes: Op[][] = [[], [], []];
    for (const op of ops) lanes[op.node === skip ? (op.node + 1) % 3 : op.node].push(op);
    await Promise.all(lanes.map(async (lane, i) => {
      for (const op of lane) await patch(i, `${prefix}-${op.entity}`, deltaOf(op));
    }));
  }

  /** Publishes that failed so far, summed over the instances. */
  async function publishFailures(): Promise<number> {
    const stats = await Promise.all(
      nodes.map(async (n) => (await (await fetch(`${n.url}/state`, READER)).json()).sync),
    );
    return stats.reduce((sum, s) => sum + s.publishFailures, 0);
  }

  /** Waits until all instances hold the same state, which matches what the ops imply. */
  async function converged(ops: Op[], prefix: string, ms = 20_000): Promise<void> {
    const ids = [...new Set(ops.map((o) => o.entity))];
    let last = "";
    try {
      await until(async () => {
        for (const e of ids) {
          const states = await Promise.all(nodes.map(async (n) => {
            const res = await fetch(`${n.url}/state/stream/${prefix}-${e}`, READER);
            const body = await res.json();
            return res.ok ? (body.entity as Entity).state : null;
          }));
          last = JSON.stringify(states);
          const mine = ops.filter((o) => o.entity === e);
          const viewers = mine.reduce(
            (n, o) => n + (o.kind === "inc" ? o.value : o.kind === "dec" ? -o.value : 0),
            0,
          );
          if (states.some((s) => s === null)) return false;
          if (!states.every((s) => canonicalJson(s) === canonicalJson(states[0]))) return false;
          const s = states[0]!;
          if (mine.some((o) => o.kind === "inc" || o.kind === "dec") && s.viewers !== viewers) {
            return false;
          }
          const peaks = mine.filter((o) => o.kind === "peak").map((o) => o.value);
          if (peaks.length && s.peakViewers !== Math.max(...peaks)) return false;
          const titles = mine.filter((o) => o.kind === "title").map((o) => `t${o.value}`);
          if (titles.length && !titles.includes(s.title as string)) return false;
        }
        return true;
      }, { ms, what: `convergence of run ${prefix}` });
    } catch (err) {
      throw new Error(`${(err as Error).message}; last states: ${last}`);
    }
    // And the whole state, not only these entities, is identical everywhere.
    await until(async () => {
      const digests = await Promise.all(
        nodes.map(async (n) => (await (await fetch(`${n.url}/state`, READER)).json()).digest),
      );
      return digests.every((d) => d === digests[0]);
    }, { ms, what: "equal digests" });
  }

  try {
    await t.step("random concurrent updates on three instances converge", async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(opArb, { minLength: 3, maxLength: 24 }), async (ops) => {
          const prefix = `n${++run}`;
          await apply(ops, prefix);
          await converged(ops, prefix);
        }),
        { numRuns: 4, endOnFailure: true },
      );
    });

    await t.step("they converge across a Redis restart in the middle of the updates", async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(opArb, { minLength: 9, maxLength: 24 }), async (ops) => {
          const prefix = `r${++run}`;
          const third = Math.ceil(ops.length / 3);
          await apply(ops.slice(0, third), prefix);
          const failuresBefore = await publishFailures();
          await redis.kill("SIGKILL");
          // Updates while Redis is gone are applied locally and stored in PostgreSQL.
          await apply(ops.slice(third, 2 * third), prefix);
          // The outage is real for the instances: their publishes fail (not queued somewhere).
          await until(async () => (await publishFailures()) > failuresBefore, {
            ms: 15_000,
            what: "a publish failing on an instance while Redis is down",
          });
          await redis.start();
          await apply(ops.slice(2 * third), prefix);
          await converged(ops, prefix);
        }),
        { numRuns: 2, endOnFailure: true },
      );
    });

    await t.step("they converge after one process is frozen and resumed", async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(opArb, { minLength: 6, maxLength: 24 }), async (ops) => {
          const prefix = `s${++run}`;
          const half = Math.ceil(ops.length / 2);
          nodes[1].child.kill("SIGSTOP");
          try {
            // conv-b is frozen: its share goes to the next instance meanwhile, and it stays
            // frozen a little longer (how long it is frozen is the scenario, not a wait).
            await apply(ops.slice(0, half), prefix, 1);
            await new Promise((r) => setTimeout(r, 600));
          } finally {
            nodes[1].child.kill("SIGCONT");
          }
          await apply(ops.slice(half), prefix);
          await converged(ops, prefix);
        }),
        { numRuns: 2, endOnFailure: true },
      );
    });

    await t.step("nothing was given up, and everything reached PostgreSQL", async () => {
      await until(async () => {
        const stats = await Promise.all(
          nodes.map(async (n) => (await (await fetch(`${n.url}/state`, READER)).json()).sync),
        );
        return stats.every((s) => s.persistBacklog === 0 && s.missing === 0);
      }, { what: "all batches stored" });
      let failed = 0, repaired = 0;
      const all: unknown[] = [];
      for (const n of nodes) {
        const { sync } = await (await fetch(`${n.url}/state`, READER)).json();
        all.push(sync);
        assert.equal(sync.lost, 0, JSON.stringify(sync));
        assert.equal(sync.rejected, 0, JSON.stringify(sync));
        failed += sync.publishFailures;
        repaired += sync.repaired;
      }
      // The outages really lost messages, and the repairs really brought them back.
      assert.ok(failed > 0, `publishes failed while Redis was down: ${JSON.stringify(all)}`);
      assert.ok(repaired > 0, `missing batches were repaired: ${JSON.stringify(all)}`);
      // The snapshot holder writes a round every second once the role has settled.
      await until(async () => {
        const rounds = await pg.psql(
          "SELECT count(*) FROM snapshots WHERE aggregate_type = 'sync.checkpoint'",
          { database: new URL(dbUrl).pathname.slice(1) },
        );
        return Number(rounds) >= 1;
      }, { what: "a snapshot round", ms: 8000 });
    });
  } finally {
    await Promise.all(nodes.map((n) => n.stop("SIGTERM")));
    await Deno.remove(dataDir, { recursive: true });
  }
});
