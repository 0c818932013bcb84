import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHmac, hkdfSync } from "node:crypto";
import { createLogger } from "../../lib/log.ts";
import { claimedSender, createMessageAuth, MESSAGE_PURPOSES } from "../../lib/message_auth.ts";

const key = () => crypto.getRandomValues(new Uint8Array(32));

Deno.test("message authentication", async (t) => {
  const k1 = key(), k2 = key();
  const auth = createMessageAuth(k1);

  await t.step("a sealed record opens for its purpose and binding only", () => {
    const sealed = auth.seal("transport.envelope", "node-a", '{"x":1}');
    assert.match(sealed, /^rs1\.[A-Za-z0-9_-]{43}\.\{"x":1\}$/);
    assert.deepEqual(auth.open("transport.envelope", "node-a", sealed), {
      body: '{"x":1}',
      previous: false,
    });
    assert.equal(auth.open("transport.envelope", "node-b", sealed), null, "other binding");
    assert.equal(auth.open("session.cache", "node-a", sealed), null, "other purpose");
    // The binding is length-prefixed: moving characters between it and the body fails.
    const cut = auth.seal("bus.message", "ab", "c");
    assert.equal(auth.open("bus.message", "a", cut.replace(/\.c$/, ".bc")), null);
  });

  await t.step("any altered byte, a missing MAC or another key is refused", () => {
    const sealed = auth.seal("sync.batch", "sync.batches", '{"v":1,"s":7}');
    for (let i = 4; i < sealed.length; i++) {
      const flipped = sealed.slice(0, i) +
        String.fromCharCode(sealed.charCodeAt(i) ^ 1) + sealed.slice(i + 1);
      assert.equal(auth.open("sync.batch", "sync.batches", flipped), null, `byte ${i}`);
    }
    assert.equal(auth.open("sync.batch", "sync.batches", '{"v":1,"s":7}'), null);
    assert.equal(auth.open("sync.batch", "sync.batches", "rs1.short"), null);
    assert.equal(createMessageAuth(k2).open("sync.batch", "sync.batches", sealed), null);
  });

  await t.step("the MAC is HMAC-SHA256 with the purpose's HKDF key", () => {
    const derived = Buffer.from(
      hkdfSync("sha256", k1, "rootstream/message-auth/v1", "rootstream session.cache", 32),
    );
    const want = createHmac("sha256", derived).update("3:abc\nbody").digest("base64url");
    assert.equal(auth.seal("session.cache", "abc", "body"), `rs1.${want}.body`);
  });

  await t.step("every purpose derives its own key", () => {
    const macs = new Set(
      MESSAGE_PURPOSES.map((p) => auth.seal(p, "same", "same").slice(4, 47)),
    );
    assert.equal(macs.size, MESSAGE_PURPOSES.length);
  });

  await t.step("rotation: the previous key opens, the current one seals", () => {
    const old = createMessageAuth(k1);
    const rotated = createMessageAuth(k2, { previous: k1 });
    const fromOld = old.seal("failover.record", "k", "{}");
    assert.deepEqual(rotated.open("failover.record", "k", fromOld), { body: "{}", previous: true });
    const fromNew = rotated.seal("failover.record", "k", "{}");
    assert.equal(old.open("failover.record", "k", fromNew), null);
    assert.deepEqual(rotated.open("failover.record", "k", fromNew), {
      body: "{}",
      previous: false,
    });
    assert.equal(rotated.stats().openedWithPrevious, 1);
    assert.equal(rotated.stats().rotating, true);
  });

  await t.step("refusals are counted every time and logged once per sender", () => {
    const lines: string[] = [];
    const logged = createMessageAuth(k1, {
      log: createLogger("t", { sink: (line) => lines.push(line) }),
    });
    for (let i = 0; i < 5; i++) logged.refused("transport.envelope", "evil");
    logged.refused("transport.envelope", "other");
    logged.refused("session.cache", "evil");
    assert.equal(logged.stats().forgedTotal, 7);
    assert.deepEqual(logged.stats().forged, { "transport.envelope": 6, "session.cache": 1 });
    assert.equal(lines.length, 3);
  });

  await t.step("the claimed sender is read from the record, boundedly", () => {
    assert.equal(claimedSender('{"from":{"instance":"n1"}}'), "n1");
    assert.equal(claimedSender(auth.seal("sync.batch", "c", '{"n":"n2"}')), "n2");
    assert.equal(claimedSender("not json"), "unknown");
    assert.equal(claimedSender(`{"n":"${"x".repeat(70_000)}"}`), "unknown");
  });

  await t.step("keys must be 32 bytes", () => {
    assert.throws(() => createMessageAuth(new Uint8Array(16)), TypeError);
  });
});
