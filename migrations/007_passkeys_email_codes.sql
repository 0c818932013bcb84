-- 007_passkeys_email_codes.sql: passkeys (WebAuthn) and e-mail codes as second factors
-- (docs/mfa.md). Data access: store/webauthn.ts, store/email_codes.ts.
--
-- Every check of either factor is logged in mfa_attempts like a TOTP code, so one lockout
-- (MFA_MAX_FAILURES within MFA_LOCK_WINDOW_S) covers every method. SMS stays out: there
-- is no sender to test against.

ALTER TABLE mfa_attempts DROP CONSTRAINT mfa_attempts_method_valid;
ALTER TABLE mfa_attempts ADD CONSTRAINT mfa_attempts_method_valid CHECK (
  method IN ('totp', 'backup_code', 'webauthn', 'email')
);

-- ---------------------------------------------------------------------------
-- webauthn_credentials: a user's passkeys (one row per authenticator)
-- ---------------------------------------------------------------------------
CREATE TABLE webauthn_credentials (
  id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id          BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  -- The authenticator's credential id (raw bytes), unique across all users: a passkey
  -- login finds its user by it.
  credential_id    BYTEA NOT NULL UNIQUE,
  -- COSE public key as the authenticator sent it (public: nothing to seal).
  public_key       BYTEA NOT NULL,
  -- The authenticator's signature counter as last seen; an assertion must bring a greater
  -- one (or both 0: authenticators without a counter), else it is a clone and refused.
  sign_count       BIGINT NOT NULL DEFAULT 0,
  transports       TEXT[] NOT NULL DEFAULT '{}',
  name             TEXT NOT NULL,
  device_type      TEXT NOT NULL,
  backed_up        BOOLEAN NOT NULL DEFAULT false,
  created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
  last_used_at     TIMESTAMPTZ,
  CONSTRAINT webauthn_credentials_name_length CHECK (char_length(name) BETWEEN 1 AND 64),
  CONSTRAINT webauthn_credentials_count_valid CHECK (sign_count >= 0),
  CONSTRAINT webauthn_credentials_device_type_valid CHECK (
    device_type IN ('singleDevice', 'multiDevice')
  )
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_id);

-- ---------------------------------------------------------------------------
-- webauthn_challenges: one challenge per ceremony, consumed by the check that reads it
-- ---------------------------------------------------------------------------
-- `subject` binds the challenge: `login:<attempt id>` for a login attempt (the second
-- factor or a passkey login), `register:<session id>` for adding a passkey. A new
-- challenge for the same subject replaces the old one; the check DELETEs the row it
-- verifies against (RETURNING), so a challenge serves once whatever the outcome.
CREATE TABLE webauthn_challenges (
  subject     TEXT PRIMARY KEY,
  challenge   TEXT NOT NULL,
  user_id     BIGINT REFERENCES users (id) ON DELETE CASCADE,
  expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX webauthn_challenges_expiry ON webauthn_challenges (expires_at);

-- ---------------------------------------------------------------------------
-- user_email_mfa: e-mail codes turned on for the account's address
-- ---------------------------------------------------------------------------
CREATE TABLE user_email_mfa (
  user_id       BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
  -- The address the codes go to, proved by a code when the factor was turned on.
  address       TEXT NOT NULL,
  confirmed_at  TIMESTAMPTZ NOT NULL
);

-- ---------------------------------------------------------------------------
-- email_codes: six-digit codes sent, stored as HMAC-SHA-256 digests
-- ---------------------------------------------------------------------------
-- `subject` binds a code like a challenge (`login:<attempt id>`, `enable:<session id>`);
-- a new code for the subject replaces the old one. Accepted codes are deleted in the
-- transaction that accepts them (single use).
CREATE TABLE email_codes (
  subject     TEXT PRIMARY KEY,
  user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  address     TEXT NOT NULL,
  code_hash   BYTEA NOT NULL,
  expires_at  TIMESTAMPTZ NOT NULL,
  created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX email_codes_expiry ON email_codes (expires_at);
