/**
 * The pages a person signs in to the review console with: the login form, the second
 * factor's form, and the page an account without the operator role sees. Plain HTML forms
 * that work without JavaScript, styled by console.css; every value is escaped.
 * @module
 */
import { escapeHtml as e } from "./html.ts";

/** What the login form shows. */
export interface LoginPageModel {
  /** Where to go after signing in (a local path). */
  next: string;
  /** The login typed before (kept on a failed attempt). */
  login?: string;
  /** Why the last attempt failed, if it did. */
  error?: string | null;
}

/** What the second-factor form shows. */
export interface MfaPageModel {
  /** Where to go after signing in. */
  next: string;
  /** The login attempt's challenge. */
  challenge: string;
  /** Why the last code failed, if it did. */
  error?: string | null;
  /** The second factors the account has (the login's `methods`); all when unknown. */
  methods?: readonly string[];
  /** A note to show (an e-mail code was sent). */
  notice?: string | null;
}

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${e(title)} — RootStream console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/console/console.css">
</head>
<body class="auth">
<main class="auth-card">
<h1>RootStream <span>review console</span></h1>
${body}
</main>
</body>
</html>
`;
}

function alert(error: string | null | undefined): string {
  return error ? `<p class="auth-error" role="alert">${e(error)}</p>` : "";
}

/** The login form (POST /login). */
export function renderLoginPage(m: LoginPageModel): string {
  return page(
    "Sign in",
    `<h2>Sign in</h2>
<p class="muted">The console shows the runtime's internals: it needs an operator or admin account.</p>
${alert(m.error)}
<form method="post" action="/login" class="auth-form">
<input type="hidden" name="next" value="${e(m.next)}">
<label for="login">Username or email</label>
<input id="login" name="login" autocomplete="username" required maxlength="254" value="${
      e(m.login ?? "")
    }" autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required maxlength="1024">
<button type="submit">Sign in</button>
</form>
<div id="passkey" hidden>
<p class="muted">Or, with a passkey registered to your account:</p>
<button type="button" id="passkey-login" data-next="${e(m.next)}">Sign in with a passkey</button>
<p class="auth-error" id="passkey-error" hidden></p>
</div>
<script src="/console/passkey.js" defer></script>`,
  );
}

/** The second factor's form (POST /login/mfa), with what the account has: a code (TOTP, backup
 * or e-mail, and a button that sends the e-mail code), and a passkey button (scripts only). */
export function renderMfaPage(m: MfaPageModel): string {
  const has = (method: string) => !m.methods || m.methods.includes(method);
  const hidden = `<input type="hidden" name="next" value="${e(m.next)}">
<input type="hidden" name="challenge" value="${e(m.challenge)}">`;
  const choice = (value: string, label: string, checked: boolean) =>
    `<label><input type="radio" name="method" value="${value}"${
      checked ? " checked" : ""
    }> ${label}</label>`;
  const choices = [
    has("totp") ? choice("totp", "Authenticator app code", true) : "",
    has("backup_code") ? choice("backup_code", "A backup code", false) : "",
    has("email") ? choice("email", "The code sent by e-mail", !has("totp")) : "",
  ].filter(Boolean).join("\n");
  const codeForm = has("totp") || has("email")
    ? `<form method="post" action="/login/mfa" class="auth-form">
${hidden}
<label for="code">Code</label>
<input id="code" name="code" autocomplete="one-time-code" inputmode="numeric" required maxlength="64" autofocus>
${choices}
<button type="submit">Verify</button>
</form>`
    : "";
  const emailForm = has("email")
    ? `<form method="post" action="/login/mfa/email" class="auth-form">
${hidden}
<button type="submit">Send me a code by e-mail</button>
</form>`
    : "";
  const passkey = has("webauthn")
    ? `<div id="passkey" hidden>
<button type="button" id="passkey-mfa" data-challenge="${e(m.challenge)}" data-next="${
      e(m.next)
    }">Use a passkey</button>
<p class="auth-error" id="passkey-error" hidden></p>
</div>
<script src="/console/passkey.js" defer></script>`
    : "";
  return page(
    "Second factor",
    `<h2>Second factor</h2>
<p class="muted">Confirm it is you with one of your second factors.</p>
${alert(m.error)}
${m.notice ? `<p class="muted" role="status">${e(m.notice)}</p>` : ""}
${codeForm}
${emailForm}
${passkey}`,
  );
}

/** What an account that may not see the console sees (403). */
export function renderForbiddenPage(m: { username: string; role: string }): string {
  return page(
    "Not an operator",
    `<h2>Not an operator</h2>
<p>You are signed in as <strong>${e(m.username)}</strong> with the role <strong>${
      e(m.role)
    }</strong>. The console is for operators and admins; an admin can change your role.</p>
<form method="post" action="/logout" class="auth-form"><button type="submit">Sign out</button></form>`,
  );
}

/** The header strip of the console for a signed-in person: who, and a sign-out button. */
export function renderViewer(v: { name: string; role: string } | null): string {
  if (!v) return "";
  return `<form method="post" action="/logout" class="viewer"><span>Signed in as <strong>${
    e(v.name)
  }</strong> (${e(v.role)})</span> <button type="submit">Sign out</button></form>`;
}
