import assert from "node:assert/strict";
import { hashPassword, needsRehash, verifyPassword } from "../../lib/password.ts";

// ln=10 keeps the suite fast; one step checks the production default separately.
const FAST = { ln: 10 };

Deno.test("password hashing", async (t) => {
  await t.step("a hash verifies its own password and no other", async () => {
    const stored = await hashPassword("correct horse battery staple", FAST);
    assert.equal(await verifyPassword("correct horse battery staple", stored), true);
    assert.equal(await verifyPassword("correct horse battery stapl", stored), false);
    assert.equal(await verifyPassword("Correct horse battery staple", stored), false);
    assert.equal(await verifyPassword("", stored), false);
  });

  await t.step("the stored string is PHC-like with a 16-byte salt and a 32-byte key", async () => {
    const stored = await hashPassword("hunter22", FAST);
    const m = /^\$scrypt\$ln=10,r=8,p=1\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$/.exec(stored);
    assert.ok(m, `unexpected format: ${stored}`);
    assert.equal(atob(m[1] + "==".slice(0, (4 - m[1].length % 4) % 4)).length, 16);
    assert.equal(atob(m[2] + "==".slice(0, (4 - m[2].length % 4) % 4)).length, 32);
    assert.ok(!stored.includes("hunter22"));
  });

  await t.step("the same password hashes differently each time (random salt)", async () => {
    const a = await hashPassword("same password", FAST);
    const b = await hashPassword("same password", FAST);
    assert.notEqual(a, b);
    assert.equal(await verifyPassword("same password", a), true);
    assert.equal(await verifyPassword("same password", b), true);
  });

  await t.step("the default cost is ln=15, r=8, p=1", async () => {
    const stored = await hashPassword("default cost password");
    assert.match(stored, /^\$scrypt\$ln=15,r=8,p=1\$/);
    assert.equal(await verifyPassword("default cost password", stored), true);
    assert.equal(needsRehash(stored), false);
  });

  await t.step("parameters are configurable and read back from the string", async () => {
    const stored = await hashPassword("tuned", { ln: 11, r: 4, p: 2 });
    assert.match(stored, /^\$scrypt\$ln=11,r=4,p=2\$/);
    assert.equal(await verifyPassword("tuned", stored), true);
  });

  await t.step("a malformed stored hash is a mismatch, never an exception", async () => {
    const good = await hashPassword("password1", FAST);
    const [, , params, salt, hash] = good.split("$");
    const malformed = [
      "",
      "password1",
      "$scrypt$",
      `$argon2id$v=19$m=65536,t=3,p=4$${salt}$${hash}`,
      `$scrypt$${params}$${salt}`,
      `$scrypt$${params}$${salt}$`,
      `$scrypt$${params}$${salt}$${hash.slice(0, 8)}`,
      `$scrypt$ln=99,r=8,p=1$${salt}$${hash}`,
      `$scrypt$ln=0,r=8,p=1$${salt}$${hash}`,
      `$scrypt$ln=20,r=99,p=1$${salt}$${hash}`,
      `$scrypt$ln=10,r=8,p=1$${salt}$${hash}!!`,
      `$scrypt$ln=10,r=8,p=1$$${hash}`,
      good + "$extra",
    ];
    for (const stored of malformed) {
      assert.equal(await verifyPassword("password1", stored), false, `accepted: ${stored}`);
    }
    // Non-string inputs arrive from untyped callers (JSON bodies); they do not throw either.
    assert.equal(await verifyPassword(undefined as unknown as string, good), false);
    assert.equal(await verifyPassword("password1", null as unknown as string), false);
  });

  await t.step("a tampered hash no longer verifies", async () => {
    const good = await hashPassword("password1", FAST);
    // A middle character: the last one carries padding bits a decoder may ignore.
    const i = good.length - 10;
    const swapped = good[i] === "A" ? "B" : "A";
    const tampered = good.slice(0, i) + swapped + good.slice(i + 1);
    assert.equal(await verifyPassword("password1", tampered), false);
  });

  await t.step("canonically equivalent Unicode passwords verify", async () => {
    const composed = "caf\u00e9 cr\u00e8me";
    const decomposed = "cafe\u0301 cre\u0300me";
    const stored = await hashPassword(composed, FAST);
    assert.equal(await verifyPassword(decomposed, stored), true);
  });

  await t.step("needsRehash flags weaker or malformed hashes", async () => {
    const weak = await hashPassword("password1", FAST);
    assert.equal(needsRehash(weak), true);
    assert.equal(needsRehash(weak, FAST), false);
    assert.equal(needsRehash(weak, { ln: 9 }), false);
    assert.equal(needsRehash(weak, { ln: 10, r: 16 }), true);
    assert.equal(needsRehash("not a hash"), true);
  });

  await t.step("invalid cost parameters are refused when hashing", async () => {
    await assert.rejects(hashPassword("password1", { ln: 0 }), RangeError);
    await assert.rejects(hashPassword("password1", { ln: 10.5 }), RangeError);
    await assert.rejects(hashPassword("password1", { ln: 10, p: 0 }), RangeError);
  });
});
