/**
 * One lockout for every second factor, also when guesses race: wrong TOTP codes, backup
 * codes, e-mail codes and passkey answers, all at once on two instances (each its own
 * connection pool), count towards one limit, and the count stops at it (every check takes
 * the user's row lock, store/mfa.ts). A failed passkey answer counts like a wrong code.
 * Real PostgreSQL; the passkey answers are real ECDSA P-256 assertions (signed here), so a
 * refusal is the server's verdict on a well-formed answer, not a parse error.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash, generateKeyPairSync, type KeyObject, sign } from "node:crypto";
import postgres from "postgres";
import { createFactors, type Factors } from "../../actors/sessions/factors.ts";
import { createRateLimiter } from "../../actors/sessions/rate_limit.ts";
import { silentLogger } from "../../lib/log.ts";
import { totpCode, totpCodeAt, totpStep } from "../../lib/totp.ts";
import { migrate } from "../../store/migrations.ts";
import { createMfaStore, type MfaCheck } from "../../store/mfa.ts";
import { createKeyspace } from "../../store/redis.ts";
import type { Sql } from "../../store/types.ts";
import { createUser } from "../../store/users.ts";
import { startPostgres } from "../harness/mod.ts";

const RP = { rpId: "localhost", rpName: "RootStream", origins: ["http://localhost:8080"] };
const MAX_FAILURES = 5;

const b64url = (bytes: Uint8Array | Buffer) => Buffer.from(bytes).toString("base64url");

/** A software authenticator: one P-256 key, its COSE public key, a counter. */
function authenticator() {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwk = publicKey.export({ format: "jwk" });
  const x = Buffer.from(jwk.x!, "base64url");
  const y = Buffer.from(jwk.y!, "base64url");
  // COSE_Key {1: 2 (EC2), 3: -7 (ES256), -1: 1 (P-256), -2: x, -3: y}, CBOR by hand.
  const cose = Buffer.concat([
    Buffer.from([0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20]),
    x,
    Buffer.from([0x22, 0x58, 0x20]),
    y,
  ]);
  return {
    credentialId: b64url(crypto.getRandomValues(new Uint8Array(16))),
    publicKey: new Uint8Array(cose),
    counter: 0,
    key: privateKey as KeyObject,
  };
}

type Authenticator = ReturnType<typeof authenticator>;

/** An assertion (the JSON text /auth/mfa/verify takes) for `challenge`, signed by `a`. */
function assertion(a: Authenticator, challenge: string): string {
  const clientData = Buffer.from(JSON.stringify({
    type: "webauthn.get",
    challenge,
    origin: RP.origins[0],
    crossOrigin: false,
  }));
  const counter = Buffer.alloc(4);
  counter.writeUInt32BE(++a.counter);
  const authData = Buffer.concat([
    createHash("sha256").update(RP.rpId).digest(),
    Buffer.from([0x05]), // user present, user verified
    counter,
  ]);
  const signature = sign(
    "sha256",
    Buffer.concat([authData, createHash("sha256").update(clientData).digest()]),
    a.key,
  );
  return JSON.stringify({
    id: a.credentialId,
    rawId: a.credentialId,
    type: "public-key",
    response: {
      clientDataJSON: b64url(clientData),
      authenticatorData: b64url(authData),
      signature: b64url(signature),
    },
    clientExtensionResults: {},
  });
}

/** A 6-digit string that is no code of the steps within ±2 of `now`. */
function wrongTotp(secret: string, now: number): string {
  const near = new Set([-2, -1, 0, 1, 2].map((d) => totpCodeAt(secret, totpStep(now) + d)));
  for (let n = 0;; n++) {
    const candidate = String(n).padStart(6, "0");
    if (!near.has(candidate)) return candidate;
  }
}

Deno.test("MFA lockout: guesses raced across methods and instances stop at the limit", async (t) => {
  await using pg = await startPostgres();
  const url = await pg.createDatabase();
  // lock_timeout: a check that waits this long for the user's row lock is wedged (a check
  // holding the lock that queries on the pool waits for a connection the queued checks
  // hold): it fails the test with an error instead of hanging it.
  const pools = [0, 1].map(() =>
    postgres(url, { max: 8, onnotice: () => {}, connection: { lock_timeout: 30_000 } }) as Sql
  );
  const [sql] = pools;
  // 10 s into a 30 s TOTP step.
  let clock = Date.UTC(2030, 0, 1, 0, 0, 10);
  const now = () => clock;
  const secretKey = new Uint8Array(32).fill(3);
  // Two instances: each its own pool, MFA store and factors.
  const instances = pools.map((pool) => {
    const mfa = createMfaStore(pool, {
      secretKey,
      now,
      maxFailures: MAX_FAILURES,
      backupCodeCost: 4,
    });
    const factors = createFactors({
      sql: pool,
      mfa,
      limiter: createRateLimiter({ redis: null, keyspace: createKeyspace("rsrace:"), now }),
      now,
      log: silentLogger,
      secretKey,
      webauthn: RP,
      mailer: null,
      limits: {
        emailPerUser: { limit: 5, windowMs: 900_000 },
        emailPerAddress: { limit: 5, windowMs: 900_000 },
      },
    });
    return { mfa, factors };
  });
  const [{ mfa, factors }] = instances;
  let users = 0;

  /** A user with TOTP (and backup codes), e-mail codes and a passkey. */
  async function everyFactor() {
    const n = ++users;
    const { id } = await createUser(sql, {
      username: `racer${n}`,
      email: `racer${n}@example.com`,
      password: "racer's password 1",
    }, { hashing: { ln: 4 } });
    const { secret } = await mfa.beginEnrollment(id, { account: `racer${n}` });
    const confirmed = await mfa.confirmEnrollment(id, totpCode(secret, clock));
    assert.ok(confirmed.ok);
    clock += 30_000;
    await factors.emailCodes.enable(id, `racer${n}@example.com`, clock);
    const key = authenticator();
    await factors.passkeys.add(id, {
      credentialId: key.credentialId,
      publicKey: key.publicKey,
      signCount: 0,
      transports: ["internal"],
      name: "laptop",
      deviceType: "singleDevice",
      backedUp: false,
    }, clock);
    return { id, secret, key };
  }

  let attempts = 0;
  /** A passkey check in a fresh login attempt: right, or answering another attempt's challenge. */
  async function passkeyCheck(
    f: Factors,
    userId: number,
    key: Authenticator,
    right: boolean,
  ): Promise<{ ok: boolean; reason?: string; locked?: boolean }> {
    const attemptId = `attempt-${++attempts}`;
    const options = await f.loginOptions(attemptId, userId, clock + 300_000);
    const other = await f.loginOptions(`other-${attempts}`, userId, clock + 300_000);
    const code = assertion(key, right ? options.challenge : other.challenge);
    const r = await f.verifiers.webauthn({
      attemptId,
      userId,
      method: "webauthn",
      code,
      ipAddress: "192.0.2.7",
    });
    return r.ok ? { ok: true } : { ok: false, reason: r.reason, locked: r.locked };
  }

  async function counted(userId: number) {
    const rows = await sql<{ outcome: string; method: string; n: number }[]>`
      SELECT outcome, method, count(*)::int AS n FROM mfa_attempts
      WHERE user_id = ${userId} AND purpose <> 'confirm'
      GROUP BY outcome, method ORDER BY outcome, method`;
    const by = (outcome: string) =>
      rows.filter((r) => r.outcome === outcome).reduce((s, r) => s + r.n, 0);
    return { invalid: by("invalid") + by("replayed"), locked: by("locked"), rows };
  }

  try {
    await migrate(sql);

    await t.step("the signed passkey answer is right: accepted for its own challenge", async () => {
      const { id, key } = await everyFactor();
      assert.deepEqual(await passkeyCheck(factors, id, key, true), { ok: true });
    });

    await t.step("a failed passkey answer counts towards the one lockout", async () => {
      const { id, secret, key } = await everyFactor();
      const results: MfaCheck[] = [];
      results.push(await mfa.verifyTotp(id, wrongTotp(secret, clock)));
      results.push(await mfa.verifyBackupCode(id, "aaaaa-aaaaa"));
      results.push(await factors.checkCode(id, "login:guess", "000000", { purpose: "login" }));
      results.push(await factors.checkCode(id, "login:guess", "111111", { purpose: "login" }));
      assert.deepEqual(results.map((r) => !r.ok && [r.reason, r.failures, r.locked]), [
        ["invalid", 1, false],
        ["invalid", 2, false],
        ["invalid", 3, false],
        ["invalid", 4, false],
      ]);
      // The fifth failure is a passkey's answer (signed, but for another attempt's challenge).
      assert.deepEqual(await passkeyCheck(factors, id, key, false), {
        ok: false,
        reason: "invalid",
        locked: true,
      });
      assert.equal((await mfa.lockState(id)).locked, true);
      // Locked for every method, right answers included.
      const right = await instances[1].mfa.verifyTotp(id, totpCode(secret, clock));
      assert.equal(!right.ok && right.reason, "locked");
      assert.deepEqual(await passkeyCheck(instances[1].factors, id, key, true), {
        ok: false,
        reason: "locked",
        locked: true,
      });
      const c = await counted(id);
      assert.deepEqual([c.invalid, c.locked], [5, 2]);
      assert.ok(c.rows.some((r) => r.method === "webauthn" && r.outcome === "invalid"));
    });

    await t.step("40 wrong guesses at once, 4 methods, 2 instances: 5 counted", async () => {
      const { id, secret, key } = await everyFactor();
      const wrong = wrongTotp(secret, clock);
      const guesses: Promise<{ ok: boolean; reason?: string }>[] = [];
      for (let i = 0; i < 40; i++) {
        const { mfa: m, factors: f } = instances[i % 2];
        const method = Math.floor(i / 2) % 4;
        guesses.push(
          method === 0
            ? m.verifyTotp(id, wrong)
            : method === 1
            ? m.verifyBackupCode(id, "bbbbb-bbbbb")
            : method === 2
            ? f.checkCode(id, `login:race-${i}`, "000000", { purpose: "login" })
            : passkeyCheck(f, id, key, false),
        );
      }
      const results = await Promise.all(guesses);
      const reasons = results.map((r) => r.ok ? "accepted" : r.reason);
      assert.equal(reasons.filter((r) => r === "invalid").length, MAX_FAILURES, reasons.join());
      assert.equal(reasons.filter((r) => r === "locked").length, 40 - MAX_FAILURES);
      const c = await counted(id);
      assert.deepEqual([c.invalid, c.locked], [MAX_FAILURES, 40 - MAX_FAILURES], JSON.stringify(c));
      const lock = await instances[1].mfa.lockState(id);
      assert.deepEqual([lock.locked, lock.failures], [true, MAX_FAILURES]);
      const right = await mfa.verifyTotp(id, totpCode(secret, clock));
      assert.equal(!right.ok && right.reason, "locked", "the right code is refused unchecked");
    });
  } finally {
    await Promise.all(pools.map((p) => p.end()));
  }
});
