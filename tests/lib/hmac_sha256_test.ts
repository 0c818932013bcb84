import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import fc from "fast-check";
import { hmacBase64url, hmacBase64urlHere, hmacKey, sameText } from "../../lib/hmac_sha256.ts";

Deno.test("HMAC-SHA256 matches node:crypto byte for byte", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 0, maxLength: 64 }),
      fc.oneof(fc.string({ maxLength: 300 }), fc.string({ unit: "binary", maxLength: 200 })),
      (key, message) => {
        const expected = createHmac("sha256", key).update(message, "utf8").digest("base64url");
        assert.equal(hmacBase64url(hmacKey(key), message), expected);
      },
    ),
    { numRuns: 2000 },
  );
  // Every length around the block and padding edges, and a large message.
  const key = hmacKey(new Uint8Array(32).fill(7));
  for (let n = 0; n < 200; n++) {
    const m = "x".repeat(n);
    assert.equal(
      hmacBase64url(key, m),
      createHmac("sha256", new Uint8Array(32).fill(7)).update(m).digest("base64url"),
      `length ${n}`,
    );
  }
  const big = "é".repeat(70_000);
  assert.equal(
    hmacBase64urlHere(key, big),
    createHmac("sha256", new Uint8Array(32).fill(7)).update(big).digest("base64url"),
  );
});

Deno.test("long messages go to node:crypto and give the same MAC as the code here", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 0, maxLength: 64 }),
      fc.oneof(
        fc.string({ minLength: 1400, maxLength: 1600 }),
        fc.string({ unit: "binary", minLength: 1400, maxLength: 1600 }),
        fc.string({ unit: "grapheme", minLength: 1400, maxLength: 1600 }),
      ),
      (key, message) => {
        const k = hmacKey(key);
        assert.equal(hmacBase64url(k, message), hmacBase64urlHere(k, message));
      },
    ),
    { numRuns: 300 },
  );
  // The key is copied: changing the caller's bytes afterwards changes no MAC.
  const bytes = new Uint8Array(32).fill(9);
  const k = hmacKey(bytes);
  const before = hmacBase64url(k, "y".repeat(5000));
  bytes.fill(1);
  assert.equal(hmacBase64url(k, "y".repeat(5000)), before);
});

Deno.test("sameText compares whole strings", () => {
  assert.equal(sameText("abc", "abc"), true);
  assert.equal(sameText("abc", "abd"), false);
  assert.equal(sameText("abc", "ab"), false);
});
