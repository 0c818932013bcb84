/**
 * E-mail codes over real SMTP: the harness's SMTP server (smtp-server, in this process)
 * receives what nodemailer sends; the test reads each delivered message and types its code.
 * Turning the factor on (step-up, a code to the account's address), signing in with a code,
 * a wrong code, single use, the send rate limit per user, the shared lockout, and the
 * ten-minute validity: on the store with explicit times, and through a whole login on the
 * instance's injected clock (moved forward, no sleep).
 */
import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";
import { type SmtpServer, startPostgres, startSmtp, startSmtpTls } from "../harness/mod.ts";
import { until } from "../support/instance.ts";
import { type ConsoleNode, createAccount, startConsoleNode } from "../console/support.ts";
import { createEmailCodeStore } from "../../store/email_codes.ts";
import postgres from "postgres";
import { createFactors } from "../../actors/sessions/factors.ts";
import { createSmtpMailer } from "../../actors/sessions/mailer.ts";
import { createRateLimiter } from "../../actors/sessions/rate_limit.ts";
import { isRuntimeError } from "../../lib/errors.ts";
import { silentLogger } from "../../lib/log.ts";
import { migrate } from "../../store/migrations.ts";
import { createMfaStore } from "../../store/mfa.ts";
import { createKeyspace } from "../../store/redis.ts";
import type { Sql } from "../../store/types.ts";
import { createUser } from "../../store/users.ts";
import { loadSessionsSettings } from "../../actors/sessions/settings.ts";

const PERSON = { username: "emil", password: "emil's password 1", role: "user" } as const;
const ADDRESS = "emil@example.com";

/** The six-digit code of a delivered message (its subject line). */
function codeOf(raw: string): string {
  const m = /^Subject: Your RootStream code: (\d{6})\r?$/m.exec(raw);
  if (!m) throw new Error(`no code in the message:\n${raw}`);
  return m[1];
}

/** What the tests read of an answer's JSON. */
interface Body {
  status?: string;
  token?: string;
  challenge?: string;
  methods?: string[];
  sentTo?: string;
  enabled?: boolean;
  passkeys?: number;
  emailCodes?: boolean;
  error?: { code: string; message: string };
}

/** One JSON request to the instance. */
async function request(
  url: string,
  r: { method: string; path: string; body?: unknown; token?: string },
): Promise<{ status: number; body: Body }> {
  const res = await fetch(`${url}${r.path}`, {
    method: r.method,
    headers: {
      ...(r.body === undefined ? {} : { "content-type": "application/json" }),
      ...(r.token ? { authorization: `Bearer ${r.token}` } : {}),
    },
    body: r.body === undefined ? undefined : JSON.stringify(r.body),
  });
  return { status: res.status, body: await res.json() };
}

/** Waits for message number `n` (1-based) and returns it. */
async function delivered(smtp: SmtpServer, n: number) {
  return await until(() => smtp.messages[n - 1], {
    what: `e-mail number ${n}`,
    state: () => smtp.messages.length,
  });
}

Deno.test("e-mail codes over SMTP: enable, sign in, single use, rate limit, lockout", async (t) => {
  await using pg = await startPostgres();
  await using smtp = await startSmtp();
  const databaseUrl = await pg.createDatabase();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-email-codes-" });
  let node: ConsoleNode | null = null;
  // The instance's clock: real time plus what the test moves it forward by.
  let skew = 0;
  try {
    node = await startConsoleNode("mail", {
      databaseUrl,
      dataDir,
      now: () => Date.now() + skew,
      env: { SMTP_URL: smtp.url, SMTP_FROM: "RootStream <codes@rootstream.test>" },
    });
    await createAccount(node, PERSON);
    const url = node.url;
    const call = (method: string, path: string, body?: unknown, token?: string) =>
      request(url, { method, path, body, token });
    const message = (n: number) => delivered(smtp, n);
    const password = async () =>
      await call("POST", "/auth/login", { login: PERSON.username, password: PERSON.password });

    let token = "";
    await t.step(
      "turning e-mail codes on takes a step-up and a code sent to the address",
      async () => {
        const login = await password();
        assert.equal(login.body.status, "authenticated");
        token = login.body.token ?? "";
        const early = await call("POST", "/auth/mfa/email/enable", undefined, token);
        assert.equal(early.status, 403);
        assert.equal(early.body.error?.code, "REAUTH_REQUIRED");
        const reauth = await call("POST", "/auth/reauth", { password: PERSON.password }, token);
        assert.equal(reauth.status, 200);
        const sent = await call("POST", "/auth/mfa/email/enable", undefined, token);
        assert.equal(sent.status, 200, JSON.stringify(sent.body));
        assert.equal(sent.body.sentTo, "e***@example.com");
        const mail = await message(1);
        assert.deepEqual(mail.to, [ADDRESS]);
        assert.equal(mail.from, "codes@rootstream.test");
        const confirmed = await call("POST", "/auth/mfa/email/confirm", {
          code: codeOf(mail.raw),
        }, token);
        assert.deepEqual(confirmed, { status: 200, body: { enabled: true } });
        const status = await call("GET", "/auth/mfa", undefined, token);
        assert.deepEqual(
          [status.body.enabled, status.body.passkeys, status.body.emailCodes],
          [false, 0, true],
          "TOTP off, no passkey, e-mail codes on",
        );
        // Stored as a keyed digest, never as the code.
        const rows = await node!.rt.db.sql`SELECT count(*)::int AS n FROM email_codes`;
        assert.equal(rows[0].n, 0, "the accepted code is gone");
      },
    );

    await t.step("a password login then needs the code of a message sent to it", async () => {
      const start = await password();
      assert.equal(start.body.status, "mfa_required");
      assert.ok(start.body.methods?.includes("email"));
      const sent = await call("POST", "/auth/mfa/email/send", { challenge: start.body.challenge });
      assert.equal(sent.status, 200, JSON.stringify(sent.body));
      const code = codeOf((await message(2)).raw);
      // Stored as HMAC-SHA-256 of "<subject>\n<code>" under a key derived from RS_SECRET_KEY:
      // recomputed here from the delivered code, the row's subject and the instance's key.
      const stored = await node!.rt.db.sql<{ subject: string; code_hash: Uint8Array }[]>`
        SELECT subject, code_hash FROM email_codes`;
      assert.equal(stored.length, 1);
      assert.match(stored[0].subject, /^login:\S+$/, "bound to the login attempt");
      const codeKey = createHmac("sha256", node!.rt.secretKey)
        .update("rootstream email codes v1").digest();
      const expected = createHmac("sha256", codeKey).update(`${stored[0].subject}\n${code}`)
        .digest();
      assert.deepEqual(new Uint8Array(stored[0].code_hash), new Uint8Array(expected));
      assert.notDeepEqual(
        new Uint8Array(stored[0].code_hash),
        new Uint8Array(createHash("sha256").update(code).digest()),
        "not a plain hash of the code",
      );
      const wrong = String((Number(code) + 1) % 1_000_000).padStart(6, "0");
      const refused = await call("POST", "/auth/mfa/verify", {
        challenge: start.body.challenge,
        method: "email",
        code: wrong,
      });
      assert.equal(refused.status, 401);
      assert.equal(refused.body.error?.code, "MFA_INVALID_CODE");
      const ok = await call("POST", "/auth/mfa/verify", {
        challenge: start.body.challenge,
        method: "email",
        code,
      });
      assert.equal(ok.body.status, "authenticated", JSON.stringify(ok.body));

      // Single use, and bound to its attempt: the same code in a new attempt is refused.
      const again = await password();
      const reused = await call("POST", "/auth/mfa/verify", {
        challenge: again.body.challenge,
        method: "email",
        code,
      });
      assert.equal(reused.status, 401);
      assert.equal(reused.body.error?.code, "MFA_INVALID_CODE");
      token = ok.body.token ?? "";
    });

    await t.step("a re-authentication takes an e-mail code with the password", async () => {
      const alone = await call("POST", "/auth/reauth", { password: PERSON.password }, token);
      assert.equal(alone.status, 403, "the password alone is not enough now");
      assert.equal(alone.body.error?.code, "REAUTH_FAILED");
      const sent = await call("POST", "/auth/reauth/challenge", { method: "email" }, token);
      assert.equal(sent.status, 200, JSON.stringify(sent.body));
      const code = codeOf((await message(3)).raw);
      const reauth = await call("POST", "/auth/reauth", {
        password: PERSON.password,
        method: "email",
        code,
      }, token);
      assert.equal(reauth.status, 200, JSON.stringify(reauth.body));
    });

    await t.step(
      "the console's sign-in pages: send (rate-limited per user) and enter the code",
      async () => {
        // Three sent so far; the limit is 5 per 15 minutes.
        const form = (path: string, fields: Record<string, string>) =>
          fetch(`${url}${path}`, {
            method: "POST",
            redirect: "manual",
            headers: { "content-type": "application/x-www-form-urlencoded", origin: url },
            body: new URLSearchParams(fields),
          });
        const signIn = await form("/login", {
          login: PERSON.username,
          password: PERSON.password,
          next: "/auth/me",
        });
        const mfaPage = await signIn.text();
        assert.equal(signIn.status, 200);
        assert.ok(mfaPage.includes('action="/login/mfa/email"'), "the page offers an e-mail code");
        assert.ok(!mfaPage.includes("passkey-mfa"), "no passkey button: the account has none");
        // The challenge token (a UUID and base64url: nothing the page had to escape).
        const challenge = mfaPage.split('name="challenge" value="')[1].split('"')[0];
        const statuses: number[] = [];
        for (let i = 0; i < 3; i++) {
          const res = await form("/login/mfa/email", { challenge, next: "/auth/me" });
          const text = await res.text();
          statuses.push(res.status);
          if (res.status === 200) assert.ok(text.includes("A code was sent to e***@example.com"));
        }
        assert.deepEqual(statuses, [200, 200, 429]);
        await message(5);
        // The last code sent for the attempt is the one that counts.
        const code = codeOf(smtp.messages[4].raw);
        const earlier = codeOf(smtp.messages[3].raw);
        if (earlier !== code) {
          const old = await form("/login/mfa", { challenge, code: earlier, method: "email" });
          await old.body?.cancel();
          assert.equal(old.status, 401);
        }
        const ok = await form("/login/mfa", { challenge, code, method: "email", next: "/auth/me" });
        await ok.body?.cancel();
        assert.equal(ok.status, 303);
        assert.equal(ok.headers.get("location"), "/auth/me");
        assert.ok(ok.headers.get("set-cookie"), "signed in: the session cookie is set");
      },
    );

    await t.step("wrong codes lock the account's second factor like TOTP", async () => {
      let last: { status: number; body: Body } = { status: 0, body: {} };
      let attempt = await password();
      assert.equal(attempt.body.status, "mfa_required");
      // Failures so far since the last success: none (the last code was accepted).
      for (let i = 0; i < 5; i++) {
        last = await call("POST", "/auth/mfa/verify", {
          challenge: attempt.body.challenge,
          method: "email",
          code: "000000",
        });
      }
      assert.equal(last.status, 429, JSON.stringify(last.body));
      assert.equal(last.body.error?.code, "MFA_LOCKED");
      attempt = await password();
      assert.equal(attempt.status, 429, "a new login is locked at once");
      assert.equal(attempt.body.error?.code, "MFA_LOCKED");
      const [{ n }] = await node!.rt.db.sql<{ n: number }[]>`
        SELECT count(*)::int AS n FROM mfa_attempts WHERE method = 'email' AND outcome = 'invalid'`;
      assert.ok(n >= 5);
    });

    await t.step("a code is valid ten minutes", async () => {
      const store = createEmailCodeStore(node!.rt.db.sql);
      const [{ id }] = await node!.rt.db.sql<{ id: string }[]>`SELECT id FROM users`;
      const digest = new Uint8Array(32).fill(1);
      const at = Date.now();
      await store.save("test:expiry", {
        userId: Number(id),
        address: ADDRESS,
        digest,
        expiresAt: at + 600_000,
        at,
      });
      const check = (when: number) =>
        node!.rt.db.sql.begin((tx) =>
          store.consume(tx as never, "test:expiry", { userId: Number(id), digest, at: when })
        );
      assert.equal((await check(at + 600_000)).outcome, "missing", "not at 10 minutes");
      assert.equal((await check(at + 599_999)).outcome, "accepted", "just before");
      assert.equal((await check(at + 1)).outcome, "missing", "and only once");
    });

    await t.step("in a login, a code is refused after ten minutes; a fresh one works", async () => {
      // Past the lockout window and the send limit's window of the steps before.
      skew += 16 * 60_000;
      const start = await password();
      assert.equal(start.body.status, "mfa_required", JSON.stringify(start.body));
      const challenge = start.body.challenge;
      const send = async () => {
        const n = smtp.messages.length + 1;
        const sent = await call("POST", "/auth/mfa/email/send", { challenge });
        assert.equal(sent.status, 200, JSON.stringify(sent.body));
        return codeOf((await message(n)).raw);
      };
      const verify = (code: string) =>
        call("POST", "/auth/mfa/verify", { challenge, method: "email", code });
      const stale = await send();
      skew += 10 * 60_000 + 1;
      const late = await verify(stale);
      assert.equal(late.status, 401, JSON.stringify(late.body));
      assert.equal(late.body.error?.code, "MFA_INVALID_CODE", "ten minutes and 1 ms: expired");
      const fresh = await send();
      skew += 10 * 60_000 - 1_000;
      const ok = await verify(fresh);
      assert.equal(ok.body.status, "authenticated", JSON.stringify(ok.body));
    });
  } finally {
    await node?.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("e-mail code sends: the per-user and the per-address limit each refuse alone", async () => {
  // Account addresses are unique, so through the API both limits count the same sends; two
  // accounts whose factor uses one address (and limits that differ: 2 per user, 3 per
  // address) tell them apart. The sessions service's factors, real SMTP, real PostgreSQL.
  await using pg = await startPostgres();
  await using smtp = await startSmtp();
  const sql = postgres(await pg.createDatabase(), { max: 4, onnotice: () => {} }) as Sql;
  const mailer = createSmtpMailer({ url: smtp.url, from: "RootStream <codes@rootstream.test>" });
  try {
    await migrate(sql);
    const id = async (username: string) =>
      (await createUser(sql, {
        username,
        email: `${username}@example.com`,
        password: `${username}'s password 1`,
      }, { hashing: { ln: 4 } })).id;
    const [ann, ben, cat] = [await id("ann"), await id("ben"), await id("cat")];
    let clock = Date.UTC(2030, 0, 1);
    const now = () => clock;
    const secretKey = new Uint8Array(32).fill(9);
    const window = 15 * 60_000;
    const factors = createFactors({
      sql,
      mfa: createMfaStore(sql, { secretKey, now }),
      limiter: createRateLimiter({ redis: null, keyspace: createKeyspace("rslimit:"), now }),
      now,
      log: silentLogger,
      secretKey,
      webauthn: { rpId: "localhost", rpName: "RootStream", origins: ["http://localhost:8080"] },
      mailer,
      limits: {
        emailPerUser: { limit: 2, windowMs: window },
        emailPerAddress: { limit: 3, windowMs: window },
      },
    });
    let n = 0;
    const send = async (userId: number, address: string) => {
      try {
        await factors.sendCode(userId, address, `login:attempt-${++n}`, "sign in");
        return "sent";
      } catch (err) {
        if (isRuntimeError(err) && err.code === "RATE_LIMITED") return "refused";
        throw err;
      }
    };
    const shared = "family@example.com";

    assert.deepEqual([await send(ann, shared), await send(ann, shared)], ["sent", "sent"]);
    assert.equal(
      await send(ann, "ann.elsewhere@example.com"),
      "refused",
      "Ann's third send, to an address nobody used: the per-user limit alone refuses",
    );
    assert.equal(await send(ben, shared), "sent", "Ben's first, the address's third: allowed");
    assert.equal(
      await send(cat, "Family@Example.COM"),
      "refused",
      "Cat's first, the address's fourth (in other letters): the per-address limit alone refuses",
    );
    assert.equal(await send(cat, "cat@example.com"), "sent", "Cat's own counter still allows");

    // A refused send neither mails nor stores a code (sendCode returns once the server took it).
    assert.deepEqual(smtp.messages.map((m) => m.to), [[shared], [shared], [shared], [
      "cat@example.com",
    ]]);
    const subjects = await sql<{ subject: string }[]>`
      SELECT subject FROM email_codes ORDER BY subject`;
    assert.deepEqual(subjects.map((r) => r.subject), [
      "login:attempt-1",
      "login:attempt-2",
      "login:attempt-4",
      "login:attempt-6",
    ]);

    // Both windows end 15 minutes after their first send.
    clock += window;
    assert.deepEqual(
      [await send(ann, "ann.elsewhere@example.com"), await send(cat, shared)],
      ["sent", "sent"],
    );
    assert.deepEqual(smtp.messages.slice(4).map((m) => m.to), [
      ["ann.elsewhere@example.com"],
      [shared],
    ]);
  } finally {
    mailer.close();
    await sql.end();
  }
});

Deno.test("e-mail codes over STARTTLS with AUTH, the server's certificate from SMTP_CA_FILE", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "rs-smtp-tls-" });
  await using pg = await startPostgres();
  // A CA and a certificate for localhost made by openssl in `dir`; AUTH only over TLS.
  await using smtp = await startSmtpTls({ dir, user: "mailer", pass: "mailer-s3cret" });
  const smtpUrl = `smtp://mailer:mailer-s3cret@localhost:${smtp.port}`;
  const from = "RootStream <codes@rootstream.test>";
  const message = { to: ADDRESS, subject: "probe", text: "probe" };
  let node: ConsoleNode | null = null;
  try {
    await t.step("the certificate is verified: without the CA the send fails", async () => {
      const untrusting = createSmtpMailer({ url: smtpUrl, from });
      try {
        await assert.rejects(untrusting.send(message), (err) => {
          assert.ok(isRuntimeError(err) && err.code === "EMAIL_SEND_FAILED", String(err));
          // Deno's node:tls reports a refused certificate as "write UNKNOWN": the hint says where to look.
          assert.match(err.message, /certificate is trusted \(SMTP_CA_FILE\)/);
          return true;
        });
      } finally {
        untrusting.close();
      }
      assert.equal(smtp.messages.length, 0);
    });

    await t.step("a wrong SMTP password fails the send", async () => {
      const wrong = createSmtpMailer({
        url: `smtp://mailer:wrong@localhost:${smtp.port}`,
        from,
        ca: await Deno.readTextFile(smtp.caFile),
      });
      try {
        await assert.rejects(wrong.send(message), (err) => {
          assert.ok(isRuntimeError(err) && err.code === "EMAIL_SEND_FAILED", String(err));
          assert.match(err.message, /Invalid login|535/);
          return true;
        });
      } finally {
        wrong.close();
      }
      assert.equal(smtp.messages.length, 0);
    });

    await t.step("a password is never sent to a server without STARTTLS", async () => {
      await using plain = await startSmtp();
      const port = new URL(plain.url).port;
      const clear = createSmtpMailer({
        url: `smtp://mailer:mailer-s3cret@127.0.0.1:${port}`,
        from,
      });
      try {
        await assert.rejects(clear.send(message), (err) => {
          assert.ok(isRuntimeError(err) && err.code === "EMAIL_SEND_FAILED", String(err));
          assert.match(err.message, /STARTTLS/);
          return true;
        });
      } finally {
        clear.close();
      }
      assert.equal(plain.messages.length, 0);
    });

    await t.step("SMTP_CA_FILE must be a readable PEM file, and needs SMTP_URL", () => {
      const problem = (env: Record<string, string>) => {
        try {
          loadSessionsSettings(env);
        } catch (err) {
          assert.ok(isRuntimeError(err) && err.code === "CONFIG_INVALID", String(err));
          return err.message;
        }
        return "accepted";
      };
      assert.match(
        problem({ SMTP_URL: smtpUrl, SMTP_CA_FILE: `${dir}/missing.pem` }),
        /SMTP_CA_FILE: cannot read .*missing\.pem/,
      );
      assert.match(
        problem({ SMTP_URL: smtpUrl, SMTP_CA_FILE: `${dir}/smtp.ext` }),
        /SMTP_CA_FILE: .*smtp\.ext holds no PEM certificate/,
      );
      assert.match(problem({ SMTP_CA_FILE: smtp.caFile }), /SMTP_URL is not/);
      assert.equal(problem({ SMTP_URL: smtpUrl, SMTP_CA_FILE: smtp.caFile }), "accepted");
    });

    await t.step("an instance turns e-mail codes on over STARTTLS + AUTH", async () => {
      node = await startConsoleNode("mail-tls", {
        databaseUrl: await pg.createDatabase(),
        dataDir: dir,
        env: { SMTP_URL: smtpUrl, SMTP_CA_FILE: smtp.caFile, SMTP_FROM: from },
      });
      await createAccount(node, PERSON);
      const call = (method: string, path: string, body?: unknown, token?: string) =>
        request(node!.url, { method, path, body, token });
      const login = await call("POST", "/auth/login", {
        login: PERSON.username,
        password: PERSON.password,
      });
      const token = login.body.token ?? "";
      assert.equal(
        (await call("POST", "/auth/reauth", { password: PERSON.password }, token)).status,
        200,
      );
      const sent = await call("POST", "/auth/mfa/email/enable", undefined, token);
      assert.equal(sent.status, 200, JSON.stringify(sent.body));
      const mail = await delivered(smtp, 1);
      assert.deepEqual([mail.to, mail.secure, mail.user], [[ADDRESS], true, "mailer"]);
      const confirmed = await call("POST", "/auth/mfa/email/confirm", {
        code: codeOf(mail.raw),
      }, token);
      assert.deepEqual(confirmed, { status: 200, body: { enabled: true } });
    });
  } finally {
    await (node as ConsoleNode | null)?.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
