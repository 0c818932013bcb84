// Passkeys on the sign-in page: the "Sign in with a passkey" button, and window.rsPasskey
// (login, register, post) for the account's own pages and scripts. The browser's own JSON
// helpers (PublicKeyCredential.parse*OptionsFromJSON, credential.toJSON) do the base64url
// work; the server checks everything (origin, challenge, signature, counter).
"use strict";
(function () {
  async function post(path, body) {
    const res = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      const err = new Error(data?.error?.message ?? `HTTP ${res.status}`);
      err.code = data?.error?.code ?? null;
      err.status = res.status;
      throw err;
    }
    return data;
  }

  /** A passkey's answer to request options (JSON text, what /auth/mfa/verify takes). */
  async function assertion(options) {
    const credential = await navigator.credentials.get({
      publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options),
    });
    return JSON.stringify(credential.toJSON());
  }

  /** A passkey login: a new attempt, the passkey's answer, the session (cookie set). */
  async function login() {
    const start = await post("/auth/passkey/options");
    const code = await assertion(start.options);
    return await post("/auth/mfa/verify", { challenge: start.challenge, method: "webauthn", code });
  }

  /** A passkey as the second factor of the attempt `challenge` (after the password). */
  async function secondFactor(challenge) {
    const { options } = await post("/auth/mfa/passkey/options", { challenge });
    const code = await assertion(options);
    return await post("/auth/mfa/verify", { challenge, method: "webauthn", code });
  }

  /** Registers a passkey under `name` (needs a recent re-authentication). */
  async function register(name) {
    const { options } = await post("/auth/passkeys/options");
    const credential = await navigator.credentials.create({
      publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options),
    });
    return await post("/auth/passkeys", { name, response: credential.toJSON() });
  }

  /** Re-authentication (step-up) with the password and a passkey. */
  async function reauth(password) {
    const { options } = await post("/auth/reauth/challenge", { method: "webauthn" });
    const code = await assertion(options);
    return await post("/auth/reauth", { password, method: "webauthn", code });
  }

  globalThis.rsPasskey = { post, assertion, login, secondFactor, register, reauth };

  const button = document.getElementById("passkey-login");
  const error = document.getElementById("passkey-error");
  // Shown only where scripts run and the browser has passkeys (the form works without).
  const section = document.getElementById("passkey");
  if (section && globalThis.PublicKeyCredential) section.hidden = false;
  const mfaButton = document.getElementById("passkey-mfa");
  if (mfaButton) {
    mfaButton.addEventListener("click", () => {
      if (error) error.hidden = true;
      secondFactor(mfaButton.dataset.challenge).then(() => {
        location.assign(mfaButton.dataset.next || "/");
      }, (err) => {
        if (error) {
          error.textContent = err.message;
          error.setAttribute("role", "alert");
          error.hidden = false;
        }
      });
    });
  }
  if (button) {
    button.addEventListener("click", () => {
      if (error) error.hidden = true;
      login().then(() => {
        location.assign(button.dataset.next || "/");
      }, (err) => {
        if (error) {
          error.textContent = err.message;
          error.setAttribute("role", "alert");
          error.hidden = false;
        }
      });
    });
  }
})();
