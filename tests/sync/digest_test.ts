/**
 * The state digest (`GET /state`, anyone may ask): the SHA-256 of the sum of one SHA-256
 * per entity, kept up to date by hashing only entities changed since the last call. It
 * must still reflect every change, whichever calls came in between, and be equal on
 * instances that hold equal state however the writes reached them.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fc from "fast-check";
import postgres from "postgres";
import { canonicalJson } from "../../lib/crdt.ts";
import { entityKey } from "../../lib/crdt_batch.ts";
import type { EntityView, SyncNode } from "../../actors/sync/node.ts";
import { migrate } from "../../store/migrations.ts";
import type { Sql } from "../../store/types.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { startTestNode, type TestNode, until } from "./support.ts";

/** The digest by its definition, from every entity's values. */
function expectedDigest(views: EntityView[]): string {
  let sum = 0n;
  for (const v of views) {
    const text = `${entityKey(v.type, v.id)}=${canonicalJson(v.state)}`;
    sum += BigInt(`0x${createHash("sha256").update(text).digest("hex")}`);
  }
  sum &= (1n << 256n) - 1n;
  return createHash("sha256").update(sum.toString(16).padStart(64, "0")).digest("hex");
}

/** One step: a write on one node, or a digest asked for in between. */
type Op =
  | {
    kind: "write";
    node: 0 | 1;
    type: "stream" | "game";
    id: number;
    field: string;
    value: number;
  }
  | { kind: "digest"; node: 0 | 1 };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant("write" as const),
    node: fc.constantFrom(0 as const, 1 as const),
    type: fc.constantFrom("stream" as const, "game" as const),
    id: fc.integer({ min: 1, max: 4 }),
    // `viewers` is a counter on streams (added up), `title` last-writer-wins.
    field: fc.constantFrom("title", "viewers"),
    value: fc.integer({ min: 0, max: 9 }),
  }),
  fc.record({
    kind: fc.constant("digest" as const),
    node: fc.constantFrom(0 as const, 1 as const),
  }),
);

Deno.test("state digest", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const sql = postgres(await pg.createDatabase(), { max: 4, onnotice: () => {} }) as Sql;
  await migrate(sql);
  const nodes: TestNode[] = [];
  try {
    nodes.push(await startTestNode("digest-a", { redisUrl: redis.url, prefix: "rsdig:", sql }));
    nodes.push(await startTestNode("digest-b", { redisUrl: redis.url, prefix: "rsdig:", sql }));
    const [A, B] = nodes.map((n) => n.node) as [SyncNode, SyncNode];
    let run = 0;

    await t.step("follows every change, whatever was asked in between", () => {
      fc.assert(
        fc.property(fc.array(opArb, { minLength: 1, maxLength: 30 }), (ops) => {
          const prefix = `p${++run}`;
          for (const op of ops) {
            if (op.kind === "digest") {
              assert.equal(A.digest(), expectedDigest(A.entities()));
              continue;
            }
            const values = () => JSON.stringify(A.entities().map((v) => [v.type, v.id, v.state]));
            const before = A.digest();
            const valuesBefore = values();
            A.applyDelta(op.type, `${prefix}-${op.id}`, {
              [op.field]: op.field === "title" ? `t${op.value}` : op.value,
            });
            const after = A.digest();
            assert.equal(after, expectedDigest(A.entities()));
            assert.equal(A.digest("game"), expectedDigest(A.entities("game")));
            // An entity the write created, or a value it changed, changes the digest.
            assert.equal(after === before, values() === valuesBefore, "digest changed iff values");
          }
        }),
        { numRuns: 40 },
      );
    });

    await t.step("equal on two instances however the writes reached them", async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 30 }), async (ops) => {
          const prefix = `q${++run}`;
          for (const op of ops) {
            const node = op.node === 0 ? A : B;
            if (op.kind === "digest") node.digest();
            else {
              node.applyDelta(op.type, `${prefix}-${op.id}`, {
                [op.field]: op.field === "title" ? `t${op.value}` : op.value,
              });
            }
          }
          let last = "";
          await until(() => {
            const [a, b] = [A.digest(), B.digest()];
            last = `A ${a}, B ${b}`;
            return a === b;
          }, "equal digests on both instances").catch((err) => {
            throw new Error(`${err.message}: ${last}`);
          });
          assert.deepEqual(A.entities(), B.entities());
          assert.equal(A.digest(), expectedDigest(A.entities()));
        }),
        { numRuns: 8 },
      );
    });
  } finally {
    for (const n of nodes) await n.close();
    await sql.end();
  }
});
