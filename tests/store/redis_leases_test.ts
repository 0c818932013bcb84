import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { createLeaseStore } from "../../store/redis_leases.ts";
import { closeRedis, createKeyspace, createRedisClient } from "../../store/redis.ts";
import { singleRedisTarget } from "../support/redis_target.ts";

Deno.test("one renew script for several leases, on a real Redis", async (t) => {
  await using redis = await singleRedisTarget();
  const client = createRedisClient(redis.settings("rs-lt:"), { name: "leases-test" });
  await client.connect();
  const raw = new Redis(redis.env.REDIS_URL);
  const store = createLeaseStore(client, createKeyspace("rs-lt:"));
  const key = (role: string) => `rs-lt:lease:{${role}}`;
  const SHORT = 60_000; // every lease starts with this TTL; a renewal sets RENEWED
  const RENEWED = 120_000;
  const evalshaCalls = async () =>
    Number((await raw.info("commandstats")).match(/cmdstat_evalsha:calls=(\d+)/)?.[1] ?? 0);

  try {
    await t.step("renews ours, reports the others' holders and leaves them untouched", async () => {
      const mine = await store.acquire("mine", "a", SHORT);
      const also = await store.acquire("also-mine", "a", SHORT);
      const theirs = await store.acquire("theirs", "b", SHORT);
      const stale = await store.acquire("stale-token", "a", SHORT);
      assert.ok(mine.acquired && also.acquired && theirs.acquired && stale.acquired);
      // Ours once, now under another token (a's lease expired and a took it again elsewhere).
      await raw.set(key("stale-token"), `{"holder":"a","token":${stale.token + 5}}`, "PX", SHORT);
      await raw.set(key("unreadable"), "not a lease", "PX", SHORT);
      const ttlBefore = Object.fromEntries(
        await Promise.all(
          ["theirs", "stale-token", "unreadable"].map(async (r) => [r, await raw.pttl(key(r))]),
        ),
      );

      await store.renewMany("a", RENEWED, [{ role: "absent", token: 3 }]); // loads the script
      const before = await evalshaCalls();
      const replies = await store.renewMany("a", RENEWED, [
        { role: "mine", token: mine.token },
        { role: "theirs", token: theirs.token },
        { role: "absent", token: 3 },
        { role: "stale-token", token: stale.token },
        { role: "also-mine", token: also.token },
        { role: "unreadable", token: 9 },
      ]);
      assert.equal(await evalshaCalls() - before, 1, "one script call for all six");

      assert.deepEqual(replies, [
        { renewed: true, holder: null },
        { renewed: false, holder: { instance: "b", token: theirs.token } },
        { renewed: false, holder: null },
        { renewed: false, holder: { instance: "a", token: stale.token + 5 } },
        { renewed: true, holder: null },
        { renewed: false, holder: null },
      ]);
      for (const role of ["mine", "also-mine"]) {
        const ttl = await raw.pttl(key(role));
        assert.ok(ttl > SHORT && ttl <= RENEWED, `${role} renewed to ${RENEWED} ms: ${ttl}`);
      }
      for (const role of ["theirs", "stale-token", "unreadable"]) {
        const ttl = await raw.pttl(key(role));
        assert.ok(ttl > 0 && ttl <= ttlBefore[role], `${role} untouched: ${ttl} ms`);
      }
      assert.equal(await raw.exists(key("absent")), 0, "an absent lease is not created");
      assert.equal(
        await raw.get(key("theirs")),
        `{"holder":"b","token":${theirs.token}}`,
        "another holder's lease unchanged",
      );
    });

    await t.step("nothing to renew is no call", async () => {
      assert.deepEqual(await store.renewMany("a", RENEWED, []), []);
    });
  } finally {
    raw.disconnect();
    await closeRedis(client);
  }
});
