import assert from "node:assert/strict";
import { isRuntimeError } from "../../lib/errors.ts";
import { createSecretBox, deriveKey, secretKeyId } from "../../lib/secret_box.ts";

function key(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}

function rejectsWith(code: string) {
  return (err: unknown) => {
    assert.ok(isRuntimeError(err), `expected a RuntimeError, got ${err}`);
    assert.equal(err.code, code, err.message);
    return true;
  };
}

Deno.test("secret box (AES-256-GCM at rest)", async (t) => {
  const k = key();
  const box = createSecretBox(k);

  await t.step("round-trips and never repeats a ciphertext", () => {
    const a = box.seal("JBSWY3DPEHPK3PXP", { context: "user_mfa:1" });
    const b = box.seal("JBSWY3DPEHPK3PXP", { context: "user_mfa:1" });
    assert.notEqual(a, b, "fresh IV per seal");
    assert.match(a, new RegExp(`^v1\\.${box.keyId}\\.`));
    assert.ok(!a.includes("JBSWY3DPEHPK3PXP"));
    assert.equal(box.openText(a, { context: "user_mfa:1" }), "JBSWY3DPEHPK3PXP");
  });

  await t.step("a value moved to another row (context) does not open", () => {
    const sealed = box.seal("secret", { context: "user_mfa:1" });
    assert.throws(() => box.open(sealed, { context: "user_mfa:2" }), rejectsWith("SECRET_INVALID"));
  });

  await t.step("tampering is detected", () => {
    const sealed = box.seal("secret");
    const parts = sealed.split(".");
    const body = parts[3];
    const flipped = (body[0] === "A" ? "B" : "A") + body.slice(1);
    assert.throws(
      () => box.open([...parts.slice(0, 3), flipped].join(".")),
      rejectsWith("SECRET_INVALID"),
    );
    assert.throws(() => box.open("not sealed"), rejectsWith("SECRET_INVALID"));
  });

  await t.step("another key is named, not mistaken for corruption", () => {
    const other = createSecretBox(key());
    assert.throws(() => other.open(box.seal("x")), rejectsWith("SECRET_KEY_MISMATCH"));
  });

  await t.step("rotation: previous keys still open old values", () => {
    const next = key();
    const rotated = createSecretBox(next, { previousKeys: [k] });
    const old = box.seal("old secret");
    assert.equal(rotated.openText(old), "old secret");
    assert.equal(rotated.keyId, secretKeyId(next));
    assert.match(rotated.seal("new"), new RegExp(`^v1\\.${secretKeyId(next)}\\.`));
  });

  await t.step("derived keys are separated by purpose and refuse short roots", () => {
    assert.notDeepEqual(deriveKey(k, "a"), deriveKey(k, "b"));
    assert.deepEqual(deriveKey(k, "a"), deriveKey(k, "a"));
    assert.throws(() => createSecretBox(new Uint8Array(16)), rejectsWith("CONFIG_INVALID"));
  });
});
