/**
 * Passkeys end to end in headless Chromium with the DevTools virtual authenticator
 * (CDP `WebAuthn.*`): a person registers a passkey (after re-authenticating), signs in with
 * it alone and as the second factor after the password, adds a second one from another
 * authenticator (both listed, either signs in, one removed after a re-authentication); a cloned authenticator (the same
 * key with a lower signature counter) is refused, a replayed answer is refused, an
 * answer made on another origin is refused, and an authenticator that cannot verify its
 * user is refused as a passwordless login but taken as the second factor after a password.
 * Real PostgreSQL, the real runtime.
 */
import assert from "node:assert/strict";
import type { Browser, CDPSession, Page } from "playwright-core";
import { launchChromium } from "../support/browser.ts";
import { verifyAuthenticationResponse } from "@simplewebauthn/server";
import { freePort, startPostgres, startRedis } from "../harness/mod.ts";
import { type ConsoleNode, createAccount, startConsoleNode } from "./support.ts";

const PERSON = { username: "pia", password: "pia's password 1", role: "user" } as const;

/** A CDP credential (WebAuthn.getCredentials). */
interface CdpCredential {
  credentialId: string;
  isResidentCredential: boolean;
  rpId: string;
  privateKey: string;
  userHandle?: string;
  signCount: number;
}

/** A page of its own (own cookies) with a virtual platform authenticator. */
async function pageWithAuthenticator(
  browser: Browser,
  url: string,
  userVerification = true,
): Promise<{ page: Page; cdp: CDPSession; authenticatorId: string; close(): Promise<void> }> {
  const context = await browser.newContext();
  const page = await context.newPage();
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: userVerification,
      isUserVerified: userVerification,
      automaticPresenceSimulation: true,
    },
  });
  await page.goto(url);
  return { page, cdp, authenticatorId, close: () => context.close() };
}

/** Runs `body` (an async function's body, a string: no DOM types here) in the page. */
async function run<T>(page: Page, body: string, arg: unknown = null): Promise<T> {
  return await page.evaluate(
    `(async (arg) => {
      try { return { ok: true, value: await (async () => { ${body} })() }; }
      catch (e) { return { ok: false, code: e.code ?? null, status: e.status ?? null, message: String(e.message) }; }
    })(${JSON.stringify(arg)})`,
  ) as T;
}

type Outcome<T = Record<string, unknown>> =
  | { ok: true; value: T }
  | { ok: false; code: string | null; status: number | null; message: string };

Deno.test("passkeys in a browser: register, sign in, clones, replays and other origins refused", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const databaseUrl = await pg.createDatabase();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-passkeys-" });
  const port = await freePort();
  const origin = `http://localhost:${port}`;
  let node: ConsoleNode | null = null;
  let second: ConsoleNode | null = null;
  const browser = await launchChromium();
  // A page on another origin (same host, other port: the RP id is still `localhost`).
  const otherPort = await freePort();
  const other = Deno.serve(
    { hostname: "127.0.0.1", port: otherPort, onListen: () => {} },
    () =>
      new Response("<!doctype html><title>elsewhere</title>", {
        headers: { "content-type": "text/html" },
      }),
  );
  try {
    const env = {
      WEBAUTHN_RP_ID: "localhost",
      WEBAUTHN_ORIGIN: origin,
      WEBAUTHN_RP_NAME: "RootStream test",
    };
    node = await startConsoleNode("pk", {
      databaseUrl,
      dataDir,
      redisUrl: redis.url,
      env: { ...env, RS_PORT: String(port) },
    });
    // A second instance of the same cluster: a passkey login may finish there.
    second = await startConsoleNode("pk-2", { databaseUrl, dataDir, redisUrl: redis.url, env });
    await createAccount(node, PERSON);
    const sql = node.rt.db.sql;
    const first = await pageWithAuthenticator(browser, `${origin}/login`);
    const { page } = first;
    let credential: CdpCredential;

    await t.step("a signed-in person registers a passkey after re-authenticating", async () => {
      const signedIn = await run<Outcome>(
        page,
        `
        const r = await rsPasskey.post("/auth/login", { login: arg.u, password: arg.p });
        return r.status;`,
        { u: PERSON.username, p: PERSON.password },
      );
      assert.deepEqual(signedIn, { ok: true, value: "authenticated" });
      const early = await run<Outcome>(page, `return await rsPasskey.register("laptop");`);
      assert.equal(early.ok, false);
      assert.equal(!early.ok && early.code, "REAUTH_REQUIRED", "adding a factor needs step-up");
      const reauth = await run<Outcome>(
        page,
        `
        return await rsPasskey.post("/auth/reauth", { password: arg });`,
        PERSON.password,
      );
      assert.equal(reauth.ok, true);
      const reg = await run<Outcome<{ passkey: { name: string; signCount: number } }>>(
        page,
        `return await rsPasskey.register("laptop");`,
      );
      assert.equal(reg.ok, true, JSON.stringify(reg));
      assert.equal(reg.ok && reg.value.passkey.name, "laptop");
      const list = await run<Outcome<{ passkeys: { name: string }[] }>>(
        page,
        `
        const r = await fetch("/auth/passkeys"); return await r.json();`,
      );
      assert.deepEqual(list.ok && list.value.passkeys.map((p) => p.name), ["laptop"]);
      const creds = await first.cdp.send("WebAuthn.getCredentials", {
        authenticatorId: first.authenticatorId,
      }) as { credentials: CdpCredential[] };
      assert.equal(creds.credentials.length, 1);
      credential = creds.credentials[0];
      await run(page, `return await rsPasskey.post("/auth/logout");`);
    });

    await t.step("the passkey signs in alone, from the sign-in page's button", async () => {
      await page.goto(`${origin}/login?next=/auth/me`);
      await Promise.all([
        page.waitForURL((u) => u.pathname === "/auth/me"),
        page.click("#passkey-login"),
      ]);
      const me = JSON.parse(await page.innerText("body"));
      assert.equal(me.user.username, PERSON.username);
      await run(page, `return await rsPasskey.post("/auth/logout");`);
    });

    await t.step("the password now asks for a second factor, and the passkey is one", async () => {
      await page.goto(`${origin}/login`);
      const r = await run<Outcome<{ status: string; userId: number }>>(
        page,
        `
        const start = await rsPasskey.post("/auth/login", { login: arg.u, password: arg.p });
        if (start.status !== "mfa_required") return start;
        return await rsPasskey.secondFactor(start.challenge);`,
        {
          u: PERSON.username,
          p: PERSON.password,
        },
      );
      assert.equal(r.ok && r.value.status, "authenticated", JSON.stringify(r));
      await run(page, `return await rsPasskey.post("/auth/logout");`);
    });

    await t.step("the console's second-factor page takes the passkey too", async () => {
      await page.goto(`${origin}/login?next=/auth/me`);
      await page.fill("#login", PERSON.username);
      await page.fill("#password", PERSON.password);
      await Promise.all([
        page.waitForSelector("#passkey-mfa", { state: "visible" }),
        page.click('form[action="/login"] button'),
      ]);
      assert.equal(await page.isVisible('form[action="/login/mfa/email"]'), false, "no e-mail");
      await Promise.all([
        page.waitForURL((u) => u.pathname === "/auth/me"),
        page.click("#passkey-mfa"),
      ]);
      assert.equal(JSON.parse(await page.innerText("body")).user.username, PERSON.username);
      await page.goto(`${origin}/login`);
      await run(page, `return await rsPasskey.post("/auth/logout");`);
    });

    await t.step("a passkey login started here finishes on the other instance", async () => {
      await page.goto(`${origin}/login`);
      const r = await run<Outcome<{ challenge: string; code: string }>>(
        page,
        `
        const start = await rsPasskey.post("/auth/passkey/options");
        return { challenge: start.challenge, code: await rsPasskey.assertion(start.options) };`,
      );
      assert.equal(r.ok, true, JSON.stringify(r));
      if (!r.ok) return;
      const res = await fetch(`${second!.url}/auth/mfa/verify`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          challenge: r.value.challenge,
          method: "webauthn",
          code: r.value.code,
        }),
      });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      assert.equal(body.status, "authenticated");
    });

    await t.step("an answer replayed to another attempt, or to its own, is refused", async () => {
      const r = await run<Outcome<{ first: string; toOther: unknown; toOwn: unknown }>>(
        page,
        `
        const a = await rsPasskey.post("/auth/passkey/options");
        const code = await rsPasskey.assertion(a.options);
        const first = (await rsPasskey.post("/auth/mfa/verify", { challenge: a.challenge, method: "webauthn", code })).status;
        const attempt = async (challenge) => {
          try { return await rsPasskey.post("/auth/mfa/verify", { challenge, method: "webauthn", code }); }
          catch (e) { return { code: e.code }; }
        };
        const b = await rsPasskey.post("/auth/passkey/options");
        return { first, toOther: await attempt(b.challenge), toOwn: await attempt(a.challenge) };`,
      );
      assert.equal(r.ok, true, JSON.stringify(r));
      if (!r.ok) return;
      assert.equal(r.value.first, "authenticated");
      assert.deepEqual(r.value.toOther, { code: "MFA_INVALID_CODE" });
      assert.deepEqual(r.value.toOwn, { code: "LOGIN_EXPIRED" });
    });

    await t.step("a cloned authenticator (a lower signature counter) is refused", async () => {
      const [{ sign_count: before }] = await sql<{ sign_count: string }[]>`
        SELECT sign_count FROM webauthn_credentials`;
      assert.ok(Number(before) >= 3, `the counter went up with each use (${before})`);
      const clone = await pageWithAuthenticator(browser, `${origin}/login`);
      try {
        await clone.cdp.send("WebAuthn.addCredential", {
          authenticatorId: clone.authenticatorId,
          credential: { ...credential!, signCount: 0 },
        });
        const r = await run<Outcome>(clone.page, `return await rsPasskey.login();`);
        assert.equal(r.ok, false);
        assert.equal(!r.ok && r.code, "MFA_INVALID_CODE");
        assert.match(!r.ok ? r.message : "", /replayed/);
        const [{ sign_count: after }] = await sql<{ sign_count: string }[]>`
          SELECT sign_count FROM webauthn_credentials`;
        assert.equal(after, before, "the stored counter did not move back");
      } finally {
        await clone.close();
      }
    });

    await t.step("an answer made on another origin is refused", async () => {
      const elsewhere = await pageWithAuthenticator(browser, `http://localhost:${otherPort}/`);
      try {
        // The same key with a counter ahead of the stored one: only the origin is wrong.
        await elsewhere.cdp.send("WebAuthn.addCredential", {
          authenticatorId: elsewhere.authenticatorId,
          credential: { ...credential!, signCount: 1000 },
        });
        const start = await (await fetch(`${origin}/auth/passkey/options`, {
          method: "POST",
          headers: { origin },
        })).json();
        const answer = await run<Outcome<string>>(
          elsewhere.page,
          `
          const c = await navigator.credentials.get({
            publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(arg),
          });
          return JSON.stringify(c.toJSON());`,
          start.options,
        );
        assert.equal(answer.ok, true, JSON.stringify(answer));
        if (!answer.ok) return;
        assert.equal(
          JSON.parse(atob(
            JSON.parse(answer.value).response.clientDataJSON.replaceAll("-", "+").replaceAll(
              "_",
              "/",
            ),
          )).origin,
          `http://localhost:${otherPort}`,
        );
        const res = await fetch(`${origin}/auth/mfa/verify`, {
          method: "POST",
          headers: { "content-type": "application/json", origin },
          body: JSON.stringify({
            challenge: start.challenge,
            method: "webauthn",
            code: answer.value,
          }),
        });
        const body = await res.json();
        assert.equal(res.status, 401);
        assert.equal(body.error.code, "MFA_INVALID_CODE");
        const [{ sign_count: count, public_key: publicKey }] = await sql<
          { sign_count: string; public_key: Uint8Array }[]
        >`SELECT sign_count, public_key FROM webauthn_credentials`;
        assert.notEqual(Number(count), 1001, "the refused answer did not advance the counter");
        // Signature, challenge and counter were right: the origin alone was refused.
        const alone = await verifyAuthenticationResponse({
          response: JSON.parse(answer.value),
          expectedChallenge: start.options.challenge,
          expectedOrigin: `http://localhost:${otherPort}`,
          expectedRPID: "localhost",
          credential: {
            id: JSON.parse(answer.value).id,
            publicKey: new Uint8Array(publicKey),
            counter: 0,
          },
        });
        assert.equal(alone.verified, true);
      } finally {
        await elsewhere.close();
      }
    });

    await t.step("without user verification: refused alone, taken after the password", async () => {
      const { credentials: [now] } = await first.cdp.send("WebAuthn.getCredentials", {
        authenticatorId: first.authenticatorId,
      }) as { credentials: CdpCredential[] };
      // The same key on an authenticator that has no user verification (no PIN, no biometrics).
      const noUv = await pageWithAuthenticator(browser, `${origin}/login`, false);
      try {
        await noUv.cdp.send("WebAuthn.addCredential", {
          authenticatorId: noUv.authenticatorId,
          credential: { ...now, signCount: now.signCount + 1000 },
        });
        // The answer's UV flag (authenticator data byte 32, bit 2), and the server's verdict.
        const answer = `
          const flags = (code) => {
            const b64 = JSON.parse(code).response.authenticatorData.replaceAll("-", "+").replaceAll("_", "/");
            const ad = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            return { up: (ad[32] & 1) !== 0, uv: (ad[32] & 4) !== 0 };
          };
          const verify = async (challenge, code) => {
            try { return (await rsPasskey.post("/auth/mfa/verify", { challenge, method: "webauthn", code })).status; }
            catch (e) { return e.code; }
          };`;
        // The browser would not even ask this authenticator when "required"; a client that
        // ignores the request (and names the credential) sends an answer without UV: the
        // server's own check must refuse it.
        const alone = await run<Outcome>(
          noUv.page,
          `${answer}
          const start = await rsPasskey.post("/auth/passkey/options");
          const asked = start.options.userVerification;
          const code = await rsPasskey.assertion({
            ...start.options,
            userVerification: "discouraged",
            allowCredentials: [{ type: "public-key", id: arg }],
          });
          return { asked, flags: flags(code), verdict: await verify(start.challenge, code) };`,
          // Named (base64url): without UV, Chromium's authenticator offers no credential to an
          // empty allow list (the NotAllowedError seen without it).
          now.credentialId.replaceAll("+", "-").replaceAll("/", "_").split("=")[0],
        );
        assert.deepEqual(alone, {
          ok: true,
          value: {
            asked: "required",
            flags: { up: true, uv: false },
            verdict: "MFA_INVALID_CODE",
          },
        });
        const afterPassword = await run<Outcome>(
          noUv.page,
          `${answer}
          const start = await rsPasskey.post("/auth/login", { login: arg.u, password: arg.p });
          if (start.status !== "mfa_required") return start;
          const { options } = await rsPasskey.post("/auth/mfa/passkey/options", { challenge: start.challenge });
          const code = await rsPasskey.assertion(options);
          return { flags: flags(code), verdict: await verify(start.challenge, code) };`,
          { u: PERSON.username, p: PERSON.password },
        );
        assert.deepEqual(afterPassword, {
          ok: true,
          value: { flags: { up: true, uv: false }, verdict: "authenticated" },
        });
        await run(noUv.page, `return await rsPasskey.post("/auth/logout");`);
      } finally {
        await noUv.close();
        // The stored counter moved past the first authenticator's: move that one ahead too.
        await first.cdp.send("WebAuthn.removeCredential", {
          authenticatorId: first.authenticatorId,
          credentialId: now.credentialId,
        });
        await first.cdp.send("WebAuthn.addCredential", {
          authenticatorId: first.authenticatorId,
          credential: { ...now, signCount: now.signCount + 10_000 },
        });
      }
    });

    await t.step(
      "a second passkey on a second authenticator: both listed, both sign in, one removed",
      async () => {
        // Signed in with the first passkey, re-authenticated with it.
        const signedIn = await run<Outcome>(
          page,
          `
        const start = await rsPasskey.post("/auth/login", { login: arg.u, password: arg.p });
        await rsPasskey.secondFactor(start.challenge);
        await rsPasskey.reauth(arg.p);
        return (await (await fetch("/auth/me")).json()).user.username;`,
          { u: PERSON.username, p: PERSON.password },
        );
        assert.deepEqual(signedIn, { ok: true, value: PERSON.username });
        // A security key: a second virtual authenticator, alone in its own browser context
        // (so the browser cannot answer with the first one), in the same session (its cookie).
        const key = await pageWithAuthenticator(browser, `${origin}/login`);
        try {
          await key.page.context().addCookies(await page.context().cookies());
          const reg = await run<Outcome<{ passkey: { name: string } }>>(
            key.page,
            `return await rsPasskey.register("security key");`,
          );
          assert.equal(reg.ok && reg.value.passkey.name, "security key", JSON.stringify(reg));
          const held = await key.cdp.send("WebAuthn.getCredentials", {
            authenticatorId: key.authenticatorId,
          }) as { credentials: CdpCredential[] };
          assert.equal(held.credentials.length, 1);
          assert.notEqual(held.credentials[0].credentialId, credential!.credentialId);
          const list = await run<Outcome<{ passkeys: { id: number; name: string }[] }>>(
            page,
            `return await (await fetch("/auth/passkeys")).json();`,
          );
          assert.ok(list.ok, JSON.stringify(list));
          assert.deepEqual(list.value.passkeys.map((p) => p.name), ["laptop", "security key"]);
          const securityKey = list.value.passkeys[1];

          // Either signs in alone, each from its own authenticator.
          const signInWith = (p: Page) =>
            run<Outcome<string>>(
              p,
              `
            await rsPasskey.post("/auth/logout").catch(() => null);
            await rsPasskey.login();
            return (await (await fetch("/auth/me")).json()).user.username;`,
            );
          assert.deepEqual(await signInWith(key.page), { ok: true, value: PERSON.username });
          assert.deepEqual(await signInWith(page), { ok: true, value: PERSON.username });

          // The security key is removed after a re-authentication (with the laptop's passkey).
          const removed = await run<Outcome<{ refused: number; status: number; left: string[] }>>(
            page,
            `
          const refused = (await fetch("/auth/passkeys/" + arg.id, { method: "DELETE" })).status;
          await rsPasskey.reauth(arg.p);
          const status = (await fetch("/auth/passkeys/" + arg.id, { method: "DELETE" })).status;
          const list = await (await fetch("/auth/passkeys")).json();
          return { refused, status, left: list.passkeys.map((p) => p.name) };`,
            { id: securityKey.id, p: PERSON.password },
          );
          assert.deepEqual(removed, {
            ok: true,
            value: { refused: 403, status: 200, left: ["laptop"] },
          });
          // The removed one signs in no more; the other still does.
          const gone = await signInWith(key.page);
          assert.equal(!gone.ok && gone.code, "MFA_INVALID_CODE", JSON.stringify(gone));
          assert.deepEqual(await signInWith(page), { ok: true, value: PERSON.username });
          await run(page, `return await rsPasskey.post("/auth/logout");`);
        } finally {
          await key.close();
        }
      },
    );

    await t.step("the passkey is removed after a re-authentication with it", async () => {
      const [{ id }] = await sql<{ id: string }[]>`SELECT id FROM webauthn_credentials`;
      const removal = await run<Outcome>(
        page,
        `
        const start = await rsPasskey.post("/auth/login", { login: arg.u, password: arg.p });
        await rsPasskey.secondFactor(start.challenge);
        // With a passkey on the account, the password alone is no re-authentication.
        let alone = null;
        try { await rsPasskey.post("/auth/reauth", { password: arg.p }); }
        catch (e) { alone = e.code; }
        if (alone !== "REAUTH_FAILED") return { alone };
        const refusedFirst = await fetch("/auth/passkeys/" + arg.id, { method: "DELETE" });
        if (refusedFirst.status !== 403) return { refusedFirst: refusedFirst.status };
        await rsPasskey.reauth(arg.p);
        const r = await fetch("/auth/passkeys/" + arg.id, { method: "DELETE" });
        const list = await (await fetch("/auth/passkeys")).json();
        return { status: r.status, left: list.passkeys.length };`,
        {
          u: PERSON.username,
          p: PERSON.password,
          id: Number(id),
        },
      );
      assert.deepEqual(removal, { ok: true, value: { status: 200, left: 0 } });
    });
    await first.close();
  } finally {
    await browser.close();
    await other.shutdown();
    await second?.stop();
    await node?.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
