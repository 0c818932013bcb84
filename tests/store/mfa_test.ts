import assert from "node:assert/strict";
import postgres from "postgres";
import { isRuntimeError } from "../../lib/errors.ts";
import { createSecretBox } from "../../lib/secret_box.ts";
import { totpCode, totpCodeAt, totpStep } from "../../lib/totp.ts";
import { migrate } from "../../store/migrations.ts";
import { createMfaStore, type MfaStore, type MfaStoreOptions } from "../../store/mfa.ts";
import type { Sql } from "../../store/types.ts";
import { createUser } from "../../store/users.ts";
import { startPostgres } from "../harness/mod.ts";

const INJECTIONS = [
  "'; DROP TABLE user_mfa; --",
  "1' OR '1'='1",
  "123456' --",
  "abcde-fghij'); DELETE FROM mfa_attempts;--",
];
const MINUTE = 60_000;

function rejectsWith(code: string) {
  return (err: unknown) => {
    assert.ok(isRuntimeError(err), `expected a RuntimeError, got ${err}`);
    assert.equal(err.code, code, err.message);
    return true;
  };
}

/** A 6-digit string that is not the code of any step within ±2 of `now`. */
function wrongCode(secret: string, now: number): string {
  const near = new Set([-2, -1, 0, 1, 2].map((d) => totpCodeAt(secret, totpStep(now) + d)));
  for (let n = 0;; n++) {
    const candidate = String(n).padStart(6, "0");
    if (!near.has(candidate)) return candidate;
  }
}

let counter = 0;
async function newUser(sql: Sql): Promise<number> {
  const n = ++counter;
  const user = await createUser(sql, {
    username: `mfa${n}`,
    email: `mfa${n}@example.com`,
    password: "mfa-user-password",
  }, { hashing: { ln: 4 } });
  return user.id;
}

Deno.test("MFA store on PostgreSQL", async (t) => {
  await using pg = await startPostgres();
  const url = await pg.createDatabase();
  const sql = postgres(url, { max: 6, onnotice: () => {} }) as Sql;
  const sql2 = postgres(url, { max: 4, onnotice: () => {} }) as Sql;
  const key = crypto.getRandomValues(new Uint8Array(32));
  // 10 s into a 30 s step, so ±1 step is unambiguous.
  let clock = Date.UTC(2030, 0, 1, 0, 0, 10);
  const options: MfaStoreOptions = { secretKey: key, now: () => clock, backupCodeCost: 10 };
  const mfa = createMfaStore(sql, options);
  // A second instance on its own pool: the replay guard must hold across both.
  const mfa2 = createMfaStore(sql2, options);
  const ip = "192.0.2.10";

  async function enrolled(store: MfaStore = mfa) {
    const userId = await newUser(sql);
    const { secret } = await store.beginEnrollment(userId, { account: `user${userId}` });
    const confirm = await store.confirmEnrollment(userId, totpCode(secret, clock), {
      ipAddress: ip,
    });
    assert.ok(confirm.ok);
    clock += 30_000; // the confirmation used this step
    return { userId, secret, backupCodes: confirm.backupCodes! };
  }

  try {
    await migrate(sql);

    await t.step("enrolment returns URI and QR; MFA stays off until confirmed", async () => {
      const userId = await newUser(sql);
      const e = await mfa.beginEnrollment(userId, { account: "alice@example.com" });
      assert.match(e.secret, /^[A-Z2-7]{32}$/);
      assert.ok(e.uri.startsWith("otpauth://totp/"));
      assert.equal(new URL(e.uri).searchParams.get("secret"), e.secret);
      assert.match(e.qrSvg, /^<svg/);
      assert.deepEqual(
        { ...(await mfa.status(userId)), confirmedAt: null },
        {
          enrolled: true,
          enabled: false,
          backupCodesRemaining: 0,
          confirmedAt: null,
          lastUsedAt: null,
        },
      );
      // The secret is sealed at rest, bound to the user.
      const [row] = await sql<{ secret: string }[]>`
        SELECT secret FROM user_mfa WHERE user_id = ${userId}`;
      assert.match(row.secret, /^v1\.[0-9a-f]{8}\./);
      assert.ok(!row.secret.includes(e.secret));
      // Not enabled: a login code is not even checked.
      const early = await mfa.verifyTotp(userId, totpCode(e.secret, clock));
      assert.equal(!early.ok && early.reason, "not_enrolled");

      const wrong = await mfa.confirmEnrollment(userId, wrongCode(e.secret, clock));
      assert.equal(!wrong.ok && wrong.reason, "invalid");
      assert.equal((await mfa.status(userId)).enabled, false);

      const ok = await mfa.confirmEnrollment(userId, totpCode(e.secret, clock), { ipAddress: ip });
      assert.ok(ok.ok);
      assert.equal(ok.backupCodes?.length, 10);
      for (const c of ok.backupCodes!) assert.match(c, /^[0-9a-z]{5}-[0-9a-z]{5}$/);
      assert.equal(new Set(ok.backupCodes).size, 10);
      const status = await mfa.status(userId);
      assert.equal(status.enabled, true);
      assert.equal(status.backupCodesRemaining, 10);
      assert.equal(status.confirmedAt?.getTime(), clock);
      const [codes] = await sql<{ t: string }[]>`
        SELECT backup_codes::text AS t FROM user_mfa WHERE user_id = ${userId}`;
      for (const c of ok.backupCodes!) assert.ok(!codes.t.includes(c.replace("-", "")));

      await assert.rejects(
        mfa.beginEnrollment(userId, { account: "again" }),
        rejectsWith("MFA_ALREADY_ENABLED"),
      );
      // The code that confirmed the enrolment cannot be replayed to log in.
      const replay = await mfa.verifyTotp(userId, totpCode(e.secret, clock));
      assert.equal(!replay.ok && replay.reason, "replayed");
    });

    await t.step("an accepted code is never accepted again, nor an older one", async () => {
      const { userId, secret } = await enrolled();
      const code = totpCode(secret, clock);
      assert.ok((await mfa.verifyTotp(userId, code, { ipAddress: ip })).ok);
      const again = await mfa.verifyTotp(userId, code, { ipAddress: ip });
      assert.equal(!again.ok && again.reason, "replayed");
      // Still inside the ±1 window 30 s later, and still refused.
      clock += 30_000;
      const later = await mfa2.verifyTotp(userId, code);
      assert.equal(!later.ok && later.reason, "replayed");
      assert.ok((await mfa.verifyTotp(userId, totpCode(secret, clock))).ok);
      clock += 30_000;
    });

    await t.step("±1 step is accepted; expired and far-future codes are not", async () => {
      const { userId, secret } = await enrolled();
      clock += 90_000;
      const step = totpStep(clock);
      const expired = await mfa.verifyTotp(userId, totpCodeAt(secret, step - 2));
      assert.equal(
        !expired.ok && expired.reason,
        totpCodeAt(secret, step - 2) ===
            totpCodeAt(secret, step - 1)
          ? "replayed"
          : "invalid",
      );
      const future = await mfa.verifyTotp(userId, totpCodeAt(secret, step + 2));
      assert.equal(future.ok, false);
      assert.ok((await mfa.verifyTotp(userId, totpCodeAt(secret, step - 1))).ok, "previous step");
      assert.ok((await mfa.verifyTotp(userId, totpCodeAt(secret, step + 1))).ok, "next step");
      await mfa.resetLock(userId);
      clock += 90_000;
    });

    await t.step("one code raced on two instances is accepted exactly once", async () => {
      const { userId, secret } = await enrolled();
      for (let round = 0; round < 5; round++) {
        clock += 30_000;
        const code = totpCode(secret, clock);
        const results = await Promise.all([
          mfa.verifyTotp(userId, code),
          mfa2.verifyTotp(userId, code),
          mfa.verifyTotp(userId, code),
          mfa2.verifyTotp(userId, code),
        ]);
        assert.equal(results.filter((r) => r.ok).length, 1, `round ${round}`);
        assert.ok(results.every((r) => r.ok || r.reason === "replayed"));
        await mfa.resetLock(userId);
      }
    });

    await t.step("backup codes work once each, also when raced", async () => {
      const { userId, backupCodes } = await enrolled();
      const first = await mfa.verifyBackupCode(userId, backupCodes[0], { ipAddress: ip });
      assert.ok(first.ok);
      assert.equal(first.ok && first.backupCodesRemaining, 9);
      const reuse = await mfa2.verifyBackupCode(userId, backupCodes[0]);
      assert.equal(!reuse.ok && reuse.reason, "invalid");
      // Typed without the dash, in capitals: still the same code.
      const typed = backupCodes[1].replace("-", " ").toUpperCase();
      assert.ok((await mfa.verifyBackupCode(userId, typed)).ok);
      const raced = await Promise.all([
        mfa.verifyBackupCode(userId, backupCodes[2]),
        mfa2.verifyBackupCode(userId, backupCodes[2]),
        mfa.verifyBackupCode(userId, backupCodes[2]),
      ]);
      assert.equal(raced.filter((r) => r.ok).length, 1);
      assert.equal((await mfa.status(userId)).backupCodesRemaining, 7);
      await mfa.resetLock(userId);
    });

    await t.step("brute force: 5 failures lock MFA for 15 min, every attempt logged", async () => {
      const { userId, secret } = await enrolled();
      const results = [];
      for (let i = 0; i < 5; i++) {
        results.push(await mfa.verifyTotp(userId, wrongCode(secret, clock), { ipAddress: ip }));
        clock += 1000;
      }
      assert.deepEqual(results.map((r) => !r.ok && r.locked), [false, false, false, false, true]);
      assert.deepEqual(results.map((r) => !r.ok && r.failures), [1, 2, 3, 4, 5]);
      // The right code is refused unchecked while locked, on every instance and method.
      const right = await mfa2.verifyTotp(userId, totpCode(secret, clock), { ipAddress: ip });
      assert.equal(!right.ok && right.reason, "locked");
      assert.ok(!right.ok && right.retryAfterMs > 0 && right.retryAfterMs <= 15 * MINUTE);
      const backup = await mfa.verifyBackupCode(userId, "aaaaa-aaaaa");
      assert.equal(!backup.ok && backup.reason, "locked");
      assert.equal((await mfa.lockState(userId)).locked, true);

      const attempts = await mfa.listAttempts(userId);
      assert.deepEqual(
        attempts.slice(0, 7).map((a) => a.outcome),
        ["locked", "locked", "invalid", "invalid", "invalid", "invalid", "invalid"],
      );
      assert.ok(attempts.slice(1, 7).every((a) => a.ipAddress === ip));
      assert.equal(attempts.at(-1)?.purpose, "confirm");

      clock += 15 * MINUTE;
      assert.equal((await mfa.lockState(userId)).locked, false);
      assert.ok((await mfa.verifyTotp(userId, totpCode(secret, clock))).ok);
      clock += 30_000;
    });

    await t.step("a success resets the count; the limit is configurable", async () => {
      const strict = createMfaStore(sql, { ...options, maxFailures: 2 });
      const { userId, secret } = await enrolled(strict);
      const miss = await strict.verifyTotp(userId, wrongCode(secret, clock));
      assert.equal(!miss.ok && miss.locked, false);
      assert.ok((await strict.verifyTotp(userId, totpCode(secret, clock))).ok);
      clock += 30_000;
      const again = await strict.verifyTotp(userId, wrongCode(secret, clock));
      assert.equal(!again.ok && again.failures, 1, "counted from the last success");
      const locks = await strict.verifyTotp(userId, wrongCode(secret, clock));
      assert.equal(!locks.ok && locks.locked, true);
      await strict.resetLock(userId);
      assert.equal((await strict.lockState(userId)).locked, false);
    });

    await t.step(
      "regenerating backup codes needs a fresh code and voids the old ones",
      async () => {
        const { userId, secret, backupCodes } = await enrolled();
        const refused = await mfa.regenerateBackupCodes(userId, wrongCode(secret, clock));
        assert.equal(refused.ok, false);
        const fresh = await mfa.regenerateBackupCodes(userId, totpCode(secret, clock));
        assert.ok(fresh.ok);
        assert.equal(fresh.backupCodes?.length, 10);
        assert.equal((await mfa.verifyBackupCode(userId, backupCodes[3])).ok, false);
        assert.ok((await mfa.verifyBackupCode(userId, fresh.backupCodes![3])).ok);
        clock += 30_000;
      },
    );

    await t.step("unenrolling needs a fresh code (TOTP or backup)", async () => {
      const { userId, secret } = await enrolled();
      const used = totpCode(secret, clock);
      assert.ok((await mfa.verifyTotp(userId, used)).ok);
      const stale = await mfa.disable(userId, used);
      assert.equal(!stale.ok && stale.reason, "replayed");
      assert.equal((await mfa.status(userId)).enabled, true);
      clock += 30_000;
      assert.ok((await mfa.disable(userId, totpCode(secret, clock))).ok);
      assert.equal((await mfa.status(userId)).enrolled, false);
      const gone = await mfa.verifyTotp(userId, totpCode(secret, clock + 30_000));
      assert.equal(!gone.ok && gone.reason, "not_enrolled");

      const other = await enrolled();
      assert.ok(
        (await mfa.disable(other.userId, other.backupCodes[0], { method: "backup_code" })).ok,
      );
      assert.equal((await mfa.status(other.userId)).enabled, false);
    });

    await t.step("an instance with another secret key says so", async () => {
      const { userId, secret } = await enrolled();
      const foreign = createMfaStore(sql, {
        ...options,
        secretKey: crypto.getRandomValues(new Uint8Array(32)),
      });
      await assert.rejects(
        foreign.verifyTotp(userId, totpCode(secret, clock)),
        rejectsWith("SECRET_KEY_MISMATCH"),
      );
    });

    await t.step(
      "a rotated key: old secrets open, and are re-sealed at their next use",
      async () => {
        const { userId, secret } = await enrolled();
        const newKey = crypto.getRandomValues(new Uint8Array(32));
        const rotated = createMfaStore(sql, {
          ...options,
          box: createSecretBox(newKey, { previousKeys: [key] }),
        });
        assert.ok((await rotated.verifyTotp(userId, totpCode(secret, clock))).ok);
        clock += 30_000;
        const retired = createMfaStore(sql, { ...options, secretKey: newKey });
        assert.ok(
          (await retired.verifyTotp(userId, totpCode(secret, clock))).ok,
          "re-sealed: the new key alone opens it",
        );
        clock += 30_000;
      },
    );

    await t.step("SQL-injection strings are just wrong codes", async () => {
      const { userId } = await enrolled();
      for (const text of INJECTIONS) {
        const r = await mfa.verifyTotp(userId, text);
        assert.equal(!r.ok && r.reason, "invalid");
        const b = await mfa.verifyBackupCode(userId, text);
        assert.equal(b.ok, false);
        await mfa.resetLock(userId);
      }
      const u = await newUser(sql);
      const e = await mfa.beginEnrollment(u, { account: INJECTIONS[0] });
      assert.ok(e.uri.includes(encodeURIComponent(INJECTIONS[0]).slice(0, 10)));
      const [{ n }] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM user_mfa`;
      assert.ok(n > 1);
    });

    await t.step("old attempts are removed by the cleanup", async () => {
      const before = (await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM mfa_attempts`)[0].n;
      assert.ok(before > 0);
      clock += 91 * 24 * 60 * MINUTE;
      assert.equal(await mfa.cleanupAttempts(), before);
    });
  } finally {
    await sql.end();
    await sql2.end();
  }
});
