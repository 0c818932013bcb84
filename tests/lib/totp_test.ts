import assert from "node:assert/strict";
import {
  generateTotpSecret,
  matchTotp,
  qrSvg,
  totpCode,
  totpCodeAt,
  totpStep,
  totpUri,
} from "../../lib/totp.ts";

// RFC 6238 Appendix B: the SHA1 seed is the ASCII string "12345678901234567890".
const RFC_SECRET = new TextEncoder().encode("12345678901234567890");
const RFC_SHA1_VECTORS: [seconds: number, code: string][] = [
  [59, "94287082"],
  [1111111109, "07081804"],
  [1111111111, "14050471"],
  [1234567890, "89005924"],
  [2000000000, "69279037"],
  [20000000000, "65353130"],
];

Deno.test("TOTP (RFC 6238)", async (t) => {
  await t.step("all six SHA1 test vectors of Appendix B (8 digits, 30 s)", () => {
    for (const [seconds, code] of RFC_SHA1_VECTORS) {
      assert.equal(
        totpCode(RFC_SECRET, seconds * 1000, { digits: 8, algorithm: "SHA1" }),
        code,
        `T = ${seconds}`,
      );
      // The verifier accepts each of them at its own time, reporting the step.
      assert.equal(
        matchTotp(RFC_SECRET, code, { now: seconds * 1000, digits: 8 }),
        totpStep(seconds * 1000),
      );
    }
  });

  const secret = generateTotpSecret();
  const now = 1_700_000_000_000;

  await t.step("a generated secret is 160 bits of base32", () => {
    assert.match(secret, /^[A-Z2-7]{32}$/);
    assert.notEqual(generateTotpSecret(), secret);
  });

  await t.step("accepts the current step and one either side, nothing further", () => {
    const step = totpStep(now);
    assert.equal(matchTotp(secret, totpCodeAt(secret, step), { now }), step);
    assert.equal(matchTotp(secret, totpCodeAt(secret, step - 1), { now }), step - 1);
    assert.equal(matchTotp(secret, totpCodeAt(secret, step + 1), { now }), step + 1);
    for (const far of [step - 2, step + 2, step - 100]) {
      const code = totpCodeAt(secret, far);
      // A far code could collide with a near one by chance (1 in 10^6 per candidate).
      const near = [-1, 0, 1].map((d) => totpCodeAt(secret, step + d));
      if (!near.includes(code)) assert.equal(matchTotp(secret, code, { now }), null);
    }
    assert.equal(matchTotp(secret, totpCodeAt(secret, step), { now, window: 0 }), step);
  });

  await t.step("refuses malformed codes without comparing", () => {
    for (const bad of ["", "12345", "1234567", "abcdef", "12 456", "123456\n", "１２３４５６"]) {
      assert.equal(matchTotp(secret, bad, { now }), null, JSON.stringify(bad));
    }
    assert.equal(matchTotp(secret, 123456 as unknown as string, { now }), null);
  });

  await t.step("otpauth URI and QR code for authenticator apps", () => {
    const uri = totpUri({ secret, issuer: "RootStream", account: "alice@example.com" });
    const url = new URL(uri);
    assert.equal(url.protocol, "otpauth:");
    assert.equal(url.host, "totp");
    assert.equal(url.searchParams.get("secret"), secret);
    assert.equal(url.searchParams.get("issuer"), "RootStream");
    assert.equal(url.searchParams.get("algorithm"), "SHA1");
    assert.equal(url.searchParams.get("digits"), "6");
    assert.equal(url.searchParams.get("period"), "30");
    const svg = qrSvg(uri);
    assert.match(svg, /^<svg[^>]*viewBox/);
    assert.match(svg, /<\/svg>$/);
  });
});
