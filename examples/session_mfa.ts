/**
 * Session + MFA, as in the planning document's usage example: register, log in,
 * re-authenticate, enrol TOTP, confirm with a code from the authenticator, log in again with
 * password + code, list and revoke sessions. (Over HTTP the enrolment routes refuse a
 * session that did not re-authenticate within RS_REAUTH_WINDOW_S: 403 REAUTH_REQUIRED.)
 *
 * Run: DATABASE_URL=postgres://… REDIS_URL=redis://… deno run -A examples/session_mfa.ts
 * (without them it runs on embedded PostgreSQL in a temporary directory).
 */
import * as OTPAuth from "otpauth";
import { createRuntime } from "../mod.ts";

const dataDir = await Deno.makeTempDir({ prefix: "rs-example-" });
const rs = await createRuntime({
  env: { ...Deno.env.toObject(), RS_DATA_DIR: dataDir, RS_PORT: "0" },
}, { serve: false });
try {
  const sessions = rs.sessions;
  const username = `player${crypto.getRandomValues(new Uint32Array(1))[0]}`;
  await sessions.register({
    username,
    email: `${username}@example.com`,
    password: "s3cure-enough-pass",
  });

  const first = await sessions.login({ login: username, password: "s3cure-enough-pass" });
  if (first.status !== "authenticated") throw new Error("no MFA yet, so no second step");
  const auth = await sessions.authenticate(first.token);

  // Changing a factor needs the password again (POST /auth/reauth over HTTP).
  await sessions.reauthenticate(auth, { password: "s3cure-enough-pass" });

  // Enrol: show enrollment.qrSvg to the user; their app derives codes from the URI.
  const enrollment = await sessions.enrollMfa(auth);
  const totp = OTPAuth.URI.parse(enrollment.uri) as OTPAuth.TOTP;
  const { backupCodes } = await sessions.confirmMfa(auth, totp.generate());
  console.log(`MFA on for ${username}; ${backupCodes.length} backup codes issued`);

  // The next login needs a second factor. The code just used cannot be used again, so
  // the authenticator's next code (accepted within the ±1 step window) answers it.
  const second = await sessions.login({ login: username, password: "s3cure-enough-pass" });
  if (second.status !== "mfa_required") throw new Error("expected an MFA challenge");
  const nextCode = totp.generate({ timestamp: Date.now() + 30_000 });
  const done = await sessions.verifyMfa({ challenge: second.challenge, code: nextCode });
  if (done.status !== "authenticated") throw new Error("login did not complete");

  const auth2 = await sessions.authenticate(done.token);
  const list = await sessions.listSessions(auth2);
  console.log(`${list.length} sessions open`);
  await sessions.revokeSession(auth2, first.session.id);
  const stillValid = await sessions.authenticate(first.token).then(() => true, () => false);
  console.log(`first session revoked: ${!stillValid}`);
  if (stillValid) throw new Error("a revoked token was accepted");
} finally {
  await rs.stop();
  await Deno.remove(dataDir, { recursive: true });
}
