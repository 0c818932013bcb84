-- 006_roles.sql: who may do what (docs/security.md, api/authz/).
--
-- users.role: every account is a `user`; `operator` may read the runtime's internals (the
-- console, actors, cluster, replication, backups, metrics, state); `admin` may also act on
-- them (switchover, backups, roles, machine tokens). Existing accounts become `user`; the
-- first admin is made by `deno task cli users create-admin`, never by default.
--
-- sessions.reauthenticated_at: when the session's owner last proved the password (and the
-- second factor, when enabled) again (POST /auth/reauth). Changing authentication factors
-- and admin actions need it within RS_REAUTH_WINDOW_S. Read from PostgreSQL only, never
-- from the Redis session cache.
--
-- machine_tokens: scoped, revocable bearer tokens of programs (a Prometheus scrape, a
-- probe, a game server writing state). Only the SHA-256 of the token is kept; the token is
-- shown once, when created.

ALTER TABLE users
  ADD COLUMN role TEXT NOT NULL DEFAULT 'user',
  ADD CONSTRAINT users_role_valid CHECK (role IN ('user', 'operator', 'admin'));

ALTER TABLE sessions ADD COLUMN reauthenticated_at TIMESTAMPTZ;

-- Re-authentication checks a second factor like a login does, and is logged like one.
ALTER TABLE mfa_attempts DROP CONSTRAINT mfa_attempts_purpose_valid;
ALTER TABLE mfa_attempts ADD CONSTRAINT mfa_attempts_purpose_valid CHECK (
  purpose IN ('login', 'confirm', 'disable', 'backup_codes', 'reset', 'reauth')
);

CREATE TABLE machine_tokens (
  id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  name          TEXT NOT NULL,
  -- Sorted, distinct scope names (api/authz/declare.ts SCOPES), e.g. {metrics:read}.
  scopes        TEXT[] NOT NULL,
  -- SHA-256 of the token (rsm_ + 43 base64url characters of 32 random bytes).
  token_hash    BYTEA NOT NULL UNIQUE,
  -- The admin who made it, or null when made by the CLI (shell access to the host).
  created_by    BIGINT REFERENCES users (id) ON DELETE SET NULL,
  created_at    TIMESTAMPTZ NOT NULL,
  expires_at    TIMESTAMPTZ,
  -- Written at most once a minute per instance (api/authz keeps the hot path read-only).
  last_used_at  TIMESTAMPTZ,
  revoked_at    TIMESTAMPTZ,
  CONSTRAINT machine_tokens_name_format CHECK (name ~ '^[A-Za-z0-9_.:@-]{1,64}$'),
  CONSTRAINT machine_tokens_scopes_present CHECK (cardinality(scopes) BETWEEN 1 AND 32),
  CONSTRAINT machine_tokens_hash_length CHECK (octet_length(token_hash) = 32)
);

-- The admin listing shows live tokens by name.
CREATE INDEX machine_tokens_live_idx ON machine_tokens (name) WHERE revoked_at IS NULL;
