/**
 * Passkeys (WebAuthn, `@simplewebauthn/server`) and e-mail codes (SMTP, nodemailer): their
 * ceremonies and the verifiers the login chart's `webauthn` and `email` methods call.
 *
 * - Every challenge and every e-mail code is bound to a subject: `login:<attempt id>` for a
 *   login attempt (so a passkey answer or a code serves only the attempt it was made for),
 *   `register:<session id>` / `enable:<session id>` for adding a factor. Each serves once
 *   (store/webauthn.ts, store/email_codes.ts).
 * - Checks go through store/mfa.ts `checkFactor`: the same lockout and attempts log as TOTP.
 * - Sign counters must go up: the library is handed counter 0 so that the one check is the
 *   conditional UPDATE in store/webauthn.ts; a counter that does not go up is refused as
 *   `replayed` (a cloned authenticator) and logged.
 * - E-mail codes: six digits from the CSPRNG, valid 10 minutes, kept as HMAC-SHA-256 under
 *   a key derived from RS_SECRET_KEY, sends rate-limited per user and per address.
 * @module
 */
import { createHmac, randomInt } from "node:crypto";
import type {
  AuthenticationResponseJSON,
  PublicKeyCredentialCreationOptionsJSON,
  PublicKeyCredentialRequestOptionsJSON,
  RegistrationResponseJSON,
} from "@simplewebauthn/server";
import { z } from "zod";
import { describeError, RuntimeError } from "../../lib/errors.ts";
import type { Logger } from "../../lib/log.ts";
import type { CodeCheckInput, CodeResult } from "../../machines/login.ts";
import { createEmailCodeStore, type EmailCodeStore } from "../../store/email_codes.ts";
import type { MfaCheck, MfaStore } from "../../store/mfa.ts";
import type { Sql } from "../../store/types.ts";
import { createWebAuthnStore, type Passkey, type WebAuthnStore } from "../../store/webauthn.ts";
import type { Mailer } from "./mailer.ts";
import type { RateLimit, RateLimiter } from "./rate_limit.ts";

// @simplewebauthn/server (and its CBOR/ASN.1/crypto dependencies) is ~20 MB resident once
// loaded; most instances never see a passkey, so it is loaded on the first passkey operation.
let webauthnModule: Promise<typeof import("@simplewebauthn/server")> | null = null;
function webauthn(): Promise<typeof import("@simplewebauthn/server")> {
  webauthnModule ??= import("@simplewebauthn/server");
  return webauthnModule;
}

/** The relying party of passkeys. */
export interface WebAuthnSettings {
  /** RP id (the site's domain). */
  rpId: string;
  /** Name shown by browsers. */
  rpName: string;
  /** Origins a ceremony may come from. */
  origins: string[];
}

/** What {@linkcode createFactors} needs. */
export interface FactorDeps {
  sql: Sql;
  mfa: MfaStore;
  limiter: RateLimiter;
  now: () => number;
  log: Logger;
  /** The runtime's secret key (the e-mail code digests' key is derived from it). */
  secretKey: Uint8Array;
  webauthn: WebAuthnSettings;
  /** The SMTP sender, or null: e-mail codes are off. */
  mailer: Mailer | null;
  limits: { emailPerUser: RateLimit; emailPerAddress: RateLimit };
}

/** The passkey and e-mail code API of the sessions concern. */
export interface Factors {
  /** The passkey store. */
  readonly passkeys: WebAuthnStore;
  /** The e-mail code store. */
  readonly emailCodes: EmailCodeStore;
  /** Verifiers of the login chart's `webauthn` and `email` methods. */
  verifiers: {
    webauthn(input: CodeCheckInput): Promise<CodeResult>;
    email(input: CodeCheckInput): Promise<CodeResult>;
  };
  /** True when the user has a passkey or e-mail codes on (a second factor is due). */
  hasFactor(userId: number): Promise<boolean>;
  /** Which of these two the user has. */
  methodsOf(userId: number): Promise<("webauthn" | "email")[]>;
  /** Options for navigator.credentials.get in login attempt `attemptId` (userId null: any passkey). */
  loginOptions(
    attemptId: string,
    userId: number | null,
    expiresAt: number,
  ): Promise<PublicKeyCredentialRequestOptionsJSON>;
  /** Options for navigator.credentials.create, bound to the session. */
  registrationOptions(
    user: { id: number; username: string; displayName: string | null },
    sessionId: string,
  ): Promise<PublicKeyCredentialCreationOptionsJSON>;
  /** Verifies a registration response against the session's challenge and stores the passkey. */
  register(
    userId: number,
    sessionId: string,
    input: { name: string; response: unknown },
  ): Promise<Passkey>;
  /** Sends a code for `subject` to the address; returns when it expires. */
  sendCode(
    userId: number,
    address: string,
    subject: string,
    purpose: string,
  ): Promise<{ expiresAt: number }>;
  /** Checks an e-mail code for `subject` (the lockout's transaction). */
  checkCode(
    userId: number,
    subject: string,
    code: string,
    options: { purpose: "login" | "confirm" | "reauth"; ipAddress?: string | null },
  ): Promise<MfaCheck>;
  /** Options for a passkey re-authentication in session `sessionId`. */
  reauthOptions(userId: number, sessionId: string): Promise<PublicKeyCredentialRequestOptionsJSON>;
  /** Checks a passkey's answer to the session's re-authentication challenge. */
  checkReauthPasskey(
    userId: number,
    sessionId: string,
    code: string,
    options: { ipAddress?: string | null },
  ): Promise<CodeResult>;
}

/** E-mail codes are valid this long. */
export const EMAIL_CODE_TTL_MS = 10 * 60_000;
/** WebAuthn ceremonies of registration have this long. */
const REGISTRATION_TTL_MS = 5 * 60_000;

const assertionSchema = z.object({
  id: z.string().min(1).max(1024),
  rawId: z.string().min(1).max(1024),
  type: z.literal("public-key"),
  response: z.object({
    clientDataJSON: z.string().max(4096),
    authenticatorData: z.string().max(4096),
    signature: z.string().max(1024),
    userHandle: z.string().max(512).optional().nullable(),
  }),
  clientExtensionResults: z.record(z.string(), z.unknown()).optional().default({}),
  authenticatorAttachment: z.string().max(32).optional().nullable(),
});

const registrationSchema = z.object({
  id: z.string().min(1).max(1024),
  rawId: z.string().min(1).max(1024),
  type: z.literal("public-key"),
  response: z.object({
    clientDataJSON: z.string().max(4096),
    attestationObject: z.string().max(16384),
    transports: z.array(z.string().max(32)).max(8).optional(),
  }).passthrough(),
  clientExtensionResults: z.record(z.string(), z.unknown()).optional().default({}),
  authenticatorAttachment: z.string().max(32).optional().nullable(),
});

const NOT_OK = { ok: false as const, reason: "invalid" as const, locked: false, retryAfterMs: 0 };

function toCode(r: MfaCheck, userId?: number): CodeResult {
  return r.ok
    ? { ok: true, backupCodesRemaining: r.backupCodesRemaining, ...(userId ? { userId } : {}) }
    : { ok: false, reason: r.reason, locked: r.locked, retryAfterMs: r.retryAfterMs };
}

/** Creates the passkey and e-mail code part of the sessions concern. */
export function createFactors(deps: FactorDeps): Factors {
  const { sql, mfa, limiter, now, log, webauthn: rp } = deps;
  const passkeys = createWebAuthnStore(sql);
  const emailCodes = createEmailCodeStore(sql);
  const codeKey = createHmac("sha256", deps.secretKey).update("rootstream email codes v1")
    .digest();

  function digest(subject: string, code: string): Uint8Array {
    return new Uint8Array(createHmac("sha256", codeKey).update(`${subject}\n${code}`).digest());
  }

  function parseJson(text: string): unknown {
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  function verifyPasskey(input: CodeCheckInput): Promise<CodeResult> {
    return checkPasskey(input, { subject: `login:${input.attemptId}`, purpose: "login" });
  }

  async function checkPasskey(
    input: Pick<CodeCheckInput, "attemptId" | "userId" | "code" | "ipAddress">,
    bound: { subject: string; purpose: "login" | "reauth" },
  ): Promise<CodeResult> {
    const subject = bound.subject;
    const parsed = assertionSchema.safeParse(parseJson(input.code));
    if (!parsed.success) {
      // Consumed all the same: a malformed answer ends this challenge too.
      await passkeys.takeChallenge(subject, now());
      return NOT_OK;
    }
    const response = parsed.data as AuthenticationResponseJSON;
    let userId = input.userId;
    if (userId === null) {
      userId = await passkeys.ownerOf(response.id);
      if (userId === null) {
        await passkeys.takeChallenge(subject, now());
        return NOT_OK;
      }
    }
    const owner = userId;
    let counter: { was: number; now: number } | null = null;
    const r = await mfa.checkFactor(owner, {
      method: "webauthn",
      purpose: bound.purpose,
      ipAddress: input.ipAddress,
    }, async (tx, at) => {
      const challenge = await passkeys.takeChallenge(subject, at, tx);
      const credential = await passkeys.lockCredential(tx, response.id);
      if (!credential && input.userId !== null && await passkeys.count(owner, tx) === 0) {
        return "not_enrolled";
      }
      if (!challenge || !credential || credential.userId !== owner) return "invalid";
      if (challenge.userId !== null && challenge.userId !== owner) return "invalid";
      let verified;
      try {
        verified = await (await webauthn()).verifyAuthenticationResponse({
          response,
          expectedChallenge: challenge.value,
          expectedOrigin: rp.origins,
          expectedRPID: rp.rpId,
          // A passkey alone (a passkey login) must have verified its user (PIN, biometrics):
          // possession and that check are the two factors. After a password, presence is enough.
          requireUserVerification: input.userId === null,
          // The counter is checked by the conditional UPDATE below, the one place for it.
          credential: {
            id: credential.credentialId,
            publicKey: credential.publicKey as Uint8Array<ArrayBuffer>,
            counter: 0,
            transports: credential.transports as never,
          },
        });
      } catch (err) {
        log.warn("passkey refused", { attempt: input.attemptId, error: describeError(err) });
        return "invalid";
      }
      if (!verified.verified) return "invalid";
      const next = verified.authenticationInfo.newCounter;
      if (!await passkeys.advanceCounter(tx, credential.id, next, at)) {
        counter = { was: credential.signCount, now: next };
        return "replayed";
      }
      return "accepted";
    });
    if (counter) {
      log.warn("passkey refused: its signature counter did not go up (a cloned authenticator?)", {
        attempt: input.attemptId,
        user: owner,
        ...(counter as { was: number; now: number }),
      });
    }
    return toCode(r, owner);
  }

  async function checkCode(
    userId: number,
    subject: string,
    code: string,
    options: { purpose: "login" | "confirm" | "reauth"; ipAddress?: string | null },
  ): Promise<MfaCheck> {
    const typed = typeof code === "string" ? code.trim().slice(0, 16) : "";
    return await mfa.checkFactor(userId, {
      method: "email",
      purpose: options.purpose,
      ipAddress: options.ipAddress,
    }, async (tx, at) => {
      if (options.purpose !== "confirm" && await emailCodes.address(userId, tx) === null) {
        return "not_enrolled";
      }
      const r = await emailCodes.consume(tx, subject, {
        userId,
        digest: digest(subject, typed),
        at,
      });
      return r.outcome === "accepted" ? "accepted" : "invalid";
    });
  }

  async function sendCode(
    userId: number,
    address: string,
    subject: string,
    purpose: string,
  ): Promise<{ expiresAt: number }> {
    if (!deps.mailer) {
      throw new RuntimeError(
        "EMAIL_SEND_FAILED",
        "Cannot send the e-mail: this server has no SMTP server configured (SMTP_URL)",
      );
    }
    const [perUser, perAddress] = await Promise.all([
      limiter.hit(["email-code-user", String(userId)], deps.limits.emailPerUser),
      limiter.hit(["email-code-address", address.toLowerCase()], deps.limits.emailPerAddress),
    ]);
    for (const d of [perUser, perAddress]) {
      if (!d.allowed) {
        throw new RuntimeError(
          "RATE_LIMITED",
          `Too many e-mail codes sent; try again in ${Math.ceil(d.retryAfterMs / 1000)} s`,
          { details: { retryAfterMs: d.retryAfterMs } },
        );
      }
    }
    const code = String(randomInt(0, 1_000_000)).padStart(6, "0");
    const at = now();
    const expiresAt = at + EMAIL_CODE_TTL_MS;
    await emailCodes.save(subject, {
      userId,
      address,
      digest: digest(subject, code),
      expiresAt,
      at,
    });
    await deps.mailer.send({
      to: address,
      subject: `Your RootStream code: ${code}`,
      text: `Your RootStream code to ${purpose} is ${code}\n\n` +
        `It is valid for 10 minutes and works once. If you did not ask for it, ` +
        `someone knows your password: change it.\n`,
    });
    return { expiresAt };
  }

  return {
    passkeys,
    emailCodes,
    verifiers: {
      webauthn: verifyPasskey,
      async email(input) {
        if (input.userId === null) return NOT_OK;
        return toCode(
          await checkCode(input.userId, `login:${input.attemptId}`, input.code, {
            purpose: "login",
            ipAddress: input.ipAddress,
          }),
        );
      },
    },
    async hasFactor(userId) {
      return (await this.methodsOf(userId)).length > 0;
    },
    async methodsOf(userId) {
      const [n, address] = await Promise.all([passkeys.count(userId), emailCodes.address(userId)]);
      const methods: ("webauthn" | "email")[] = [];
      if (n > 0) methods.push("webauthn");
      // Whether or not SMTP is configured now: taking SMTP_URL away must not quietly drop
      // an account's second factor (sends then fail with a sentence saying why).
      if (address !== null) methods.push("email");
      return methods;
    },
    async loginOptions(attemptId, userId, expiresAt) {
      const allow = userId === null ? [] : await passkeys.list(userId);
      const options = await (await webauthn()).generateAuthenticationOptions({
        rpID: rp.rpId,
        userVerification: userId === null ? "required" : "preferred",
        allowCredentials: allow.map((p) => ({
          id: p.credentialId,
          transports: p.transports as never,
        })),
      });
      await passkeys.saveChallenge(`login:${attemptId}`, {
        value: options.challenge,
        userId,
        expiresAt,
      });
      return options;
    },
    async registrationOptions(user, sessionId) {
      const existing = await passkeys.list(user.id);
      const options = await (await webauthn()).generateRegistrationOptions({
        rpName: rp.rpName,
        rpID: rp.rpId,
        userName: user.username,
        userDisplayName: user.displayName ?? user.username,
        userID: new TextEncoder().encode(`rootstream-user:${user.id}`),
        attestationType: "none",
        excludeCredentials: existing.map((p) => ({
          id: p.credentialId,
          transports: p.transports as never,
        })),
        authenticatorSelection: { residentKey: "required", userVerification: "preferred" },
      });
      await passkeys.saveChallenge(`register:${sessionId}`, {
        value: options.challenge,
        userId: user.id,
        expiresAt: now() + REGISTRATION_TTL_MS,
      });
      return options;
    },
    async register(userId, sessionId, input) {
      const refused = (why: string) =>
        new RuntimeError("WEBAUTHN_REFUSED", `The passkey was not registered: ${why}`);
      const name = typeof input.name === "string" ? input.name.trim() : "";
      if (name.length < 1 || name.length > 64) {
        throw new RuntimeError(
          "VALIDATION_FAILED",
          "Invalid request: name must be 1 to 64 characters",
        );
      }
      const parsed = registrationSchema.safeParse(input.response);
      const challenge = await passkeys.takeChallenge(`register:${sessionId}`, now());
      if (!parsed.success) throw refused("the response is malformed");
      if (!challenge || challenge.userId !== userId) {
        throw refused("no registration is in progress for this session (ask for options first)");
      }
      let verified;
      try {
        verified = await (await webauthn()).verifyRegistrationResponse({
          response: parsed.data as RegistrationResponseJSON,
          expectedChallenge: challenge.value,
          expectedOrigin: rp.origins,
          expectedRPID: rp.rpId,
          requireUserVerification: false,
        });
      } catch (err) {
        throw refused(describeError(err));
      }
      if (!verified.verified || !verified.registrationInfo) throw refused("it did not verify");
      const info = verified.registrationInfo;
      return await passkeys.add(userId, {
        credentialId: info.credential.id,
        publicKey: info.credential.publicKey,
        signCount: info.credential.counter,
        transports: parsed.data.response.transports ?? [],
        name,
        deviceType: info.credentialDeviceType,
        backedUp: info.credentialBackedUp,
      }, now());
    },
    sendCode,
    checkCode,
    async reauthOptions(userId, sessionId) {
      const allow = await passkeys.list(userId);
      const options = await (await webauthn()).generateAuthenticationOptions({
        rpID: rp.rpId,
        userVerification: "preferred",
        allowCredentials: allow.map((p) => ({
          id: p.credentialId,
          transports: p.transports as never,
        })),
      });
      await passkeys.saveChallenge(`reauth:${sessionId}`, {
        value: options.challenge,
        userId,
        expiresAt: now() + REGISTRATION_TTL_MS,
      });
      return options;
    },
    checkReauthPasskey(userId, sessionId, code, options) {
      return checkPasskey({
        attemptId: `reauth:${sessionId}`,
        userId,
        code,
        ipAddress: options.ipAddress ?? null,
      }, { subject: `reauth:${sessionId}`, purpose: "reauth" });
    },
  };
}
