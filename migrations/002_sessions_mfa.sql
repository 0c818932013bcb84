-- 002_sessions_mfa.sql: device and network tracking on login sessions, revocation, and
-- multi-factor authentication (TOTP secrets, backup codes, the attempts log).
--
-- Tables: sessions (new columns), user_mfa, mfa_attempts. Data access lives in
-- store/sessions.ts and store/mfa.ts; docs/mfa.md describes the behaviour.
--
-- Times written by the runtime (expires_at, revoked_at, last_activity_at, attempted_at,
-- ...) come from its injected clock, not from now(), so tests can move time; the
-- defaults below only serve manual inserts.

-- ---------------------------------------------------------------------------
-- sessions: device, network, "remember me", activity and revocation
-- ---------------------------------------------------------------------------
ALTER TABLE sessions
  -- As sent by the client (X-Device-Fingerprint); a token presented with another one is
  -- refused and the mismatch counted below.
  ADD COLUMN device_fingerprint  TEXT,
  ADD COLUMN ip_address          INET,
  ADD COLUMN geo_location        TEXT,
  ADD COLUMN user_agent          TEXT,
  -- Remembered sessions get the longer sliding lifetime and absolute cap.
  ADD COLUMN is_remembered       BOOLEAN NOT NULL DEFAULT false,
  -- Written at most once per throttle interval per instance (store/sessions.ts).
  ADD COLUMN last_activity_at    TIMESTAMPTZ,
  -- A revoked session stays (for the user's history and the audit trail) until the
  -- cleanup removes it; the token is refused from the moment revoked_at is set.
  ADD COLUMN revoked_at          TIMESTAMPTZ,
  ADD COLUMN revoked_reason      TEXT,
  ADD COLUMN device_mismatches   INTEGER NOT NULL DEFAULT 0,
  ADD COLUMN last_mismatch_at    TIMESTAMPTZ,
  ADD CONSTRAINT sessions_device_fingerprint_length CHECK (
    char_length(device_fingerprint) BETWEEN 1 AND 255
  ),
  ADD CONSTRAINT sessions_geo_location_length CHECK (char_length(geo_location) BETWEEN 1 AND 100),
  ADD CONSTRAINT sessions_user_agent_length CHECK (char_length(user_agent) BETWEEN 1 AND 1024),
  ADD CONSTRAINT sessions_revoked_reason_valid CHECK (
    revoked_reason IN ('logout', 'revoked', 'revoked_all', 'evicted', 'mfa_changed', 'admin')
  ),
  ADD CONSTRAINT sessions_revoked_has_reason CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL)),
  ADD CONSTRAINT sessions_device_mismatches_non_negative CHECK (device_mismatches >= 0);

-- Live sessions of a user, oldest first: the concurrent-session limit evicts from the
-- front, the listing reads it backwards. Revoked rows are not in it.
CREATE INDEX sessions_user_live_idx ON sessions (user_id, created_at) WHERE revoked_at IS NULL;
-- The cleanup removes revoked sessions after a retention period.
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Creates a session and enforces the per-user limit, atomically (store/sessions.ts calls
-- it; the behaviour is documented there and in docs/mfa.md). It locks the user's row, so
-- logins of one user queue here; each following statement of a VOLATILE function takes a
-- fresh snapshot, so the eviction sees every session a login before it committed, and the
-- limit holds at every moment. A client cannot do this in one statement (a statement's
-- snapshot predates its lock wait), and BEGIN + lock + evict + insert + COMMIT costs four
-- times the client work. Returns no row for an unknown or inactive user; `evicted` lists
-- the sessions it revoked as [{"id": uuid, "h": token hash hex}].
CREATE FUNCTION create_session_limited(
  p_user_id bigint, p_token_hash bytea, p_expires_at timestamptz, p_created_at timestamptz,
  p_fingerprint text, p_ip inet, p_geo text, p_user_agent text, p_remembered boolean,
  p_limit integer
) RETURNS TABLE (
  id uuid, user_id bigint, expires_at timestamptz, created_at timestamptz,
  updated_at timestamptz, device_fingerprint text, ip_address inet, geo_location text,
  user_agent text, is_remembered boolean, last_activity_at timestamptz,
  revoked_at timestamptz, revoked_reason text, device_mismatches integer, evicted jsonb
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_evicted jsonb;
BEGIN
  IF p_limit IS NULL OR p_limit < 1 THEN
    RAISE EXCEPTION 'session limit must be at least 1, got %', p_limit;
  END IF;
  PERFORM 1 FROM users u WHERE u.id = p_user_id AND u.is_active FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  -- Keep the newest p_limit - 1 live sessions; the new one makes p_limit.
  WITH ev AS (
    UPDATE sessions s SET revoked_at = p_created_at, revoked_reason = 'evicted'
    WHERE s.id IN (
      SELECT o.id FROM sessions o
      WHERE o.user_id = p_user_id AND o.revoked_at IS NULL AND o.expires_at > p_created_at
      ORDER BY o.created_at DESC, o.id DESC
      OFFSET p_limit - 1
    )
    RETURNING s.id, s.token_hash
  )
  SELECT coalesce(jsonb_agg(jsonb_build_object('id', ev.id, 'h', encode(ev.token_hash, 'hex'))),
                  '[]'::jsonb)
  INTO v_evicted FROM ev;
  RETURN QUERY
    INSERT INTO sessions AS s (
      user_id, token_hash, expires_at, created_at, device_fingerprint, ip_address,
      geo_location, user_agent, is_remembered, last_activity_at
    ) VALUES (
      p_user_id, p_token_hash, p_expires_at, p_created_at, p_fingerprint, p_ip,
      p_geo, p_user_agent, p_remembered, p_created_at
    )
    RETURNING s.id, s.user_id, s.expires_at, s.created_at, s.updated_at,
      s.device_fingerprint, s.ip_address, s.geo_location, s.user_agent, s.is_remembered,
      s.last_activity_at, s.revoked_at, s.revoked_reason, s.device_mismatches, v_evicted;
END;
$$;

-- ---------------------------------------------------------------------------
-- user_mfa: one row per user and method (TOTP only for now)
-- ---------------------------------------------------------------------------
CREATE TABLE user_mfa (
  id                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id              BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  -- The planning document also names 'sms' and 'email'; they need a new migration and
  -- a sender before this CHECK is widened.
  method               TEXT NOT NULL DEFAULT 'totp',
  -- AES-256-GCM sealed base32 secret (lib/secret_box.ts): v1.<key id>.<iv>.<ciphertext>.
  secret               TEXT NOT NULL,
  -- False from enrolment until the user confirms a valid code.
  is_enabled           BOOLEAN NOT NULL DEFAULT false,
  -- scrypt digests (hex) of the unused backup codes; a used code is removed from the
  -- array in the same UPDATE that accepts it.
  backup_codes         JSONB NOT NULL DEFAULT '[]'::jsonb,
  -- Per-user scrypt salt and cost of those digests (one salt, so a typed code costs one
  -- scrypt, not ten).
  backup_codes_salt    BYTEA,
  backup_codes_params  TEXT,
  -- Replay guard: the newest accepted TOTP time step. A code is accepted only for a
  -- step greater than this, compared and set under the row lock (RFC 6238 section 5.2).
  last_used_step       BIGINT,
  created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
  confirmed_at         TIMESTAMPTZ,
  last_used_at         TIMESTAMPTZ,
  updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT user_mfa_method_valid CHECK (method IN ('totp')),
  CONSTRAINT user_mfa_secret_sealed CHECK (secret ~ '^v1\.[0-9a-f]{8}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$'),
  CONSTRAINT user_mfa_backup_codes_array CHECK (
    jsonb_typeof(backup_codes) = 'array' AND jsonb_array_length(backup_codes) <= 32
  ),
  CONSTRAINT user_mfa_backup_salt_length CHECK (octet_length(backup_codes_salt) = 16),
  CONSTRAINT user_mfa_backup_params_format CHECK (
    backup_codes_params ~ '^ln=[0-9]{1,2},r=[0-9]{1,2},p=[0-9]{1,2}$'
  ),
  CONSTRAINT user_mfa_enabled_is_confirmed CHECK (NOT is_enabled OR confirmed_at IS NOT NULL),
  CONSTRAINT user_mfa_last_used_step_non_negative CHECK (last_used_step >= 0),
  -- Also the planning document's idx_user_mfa_user_id: it serves every lookup by user.
  CONSTRAINT user_mfa_user_method_key UNIQUE (user_id, method)
);

CREATE TRIGGER user_mfa_set_updated_at BEFORE UPDATE ON user_mfa
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- ---------------------------------------------------------------------------
-- mfa_attempts: every code checked, accepted or not, with the caller's address
-- ---------------------------------------------------------------------------
CREATE TABLE mfa_attempts (
  id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  method        TEXT NOT NULL,
  -- What the code was for: completing a login, confirming an enrolment, disabling MFA,
  -- regenerating backup codes; 'reset' rows are operator unlocks.
  purpose       TEXT NOT NULL,
  success       BOOLEAN NOT NULL,
  -- accepted; invalid (wrong or outside the time window); replayed (a step already
  -- used); locked (refused unchecked while locked); reset (operator unlock).
  outcome       TEXT NOT NULL,
  ip_address    INET,
  attempted_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT mfa_attempts_method_valid CHECK (method IN ('totp', 'backup_code')),
  CONSTRAINT mfa_attempts_purpose_valid CHECK (
    purpose IN ('login', 'confirm', 'disable', 'backup_codes', 'reset')
  ),
  CONSTRAINT mfa_attempts_outcome_valid CHECK (
    outcome IN ('accepted', 'invalid', 'replayed', 'locked', 'reset')
  ),
  CONSTRAINT mfa_attempts_success_matches_outcome CHECK (
    success = (outcome IN ('accepted', 'reset'))
  )
);

-- The lockout counts a user's recent failures since the last success (newest first);
-- also the planning document's idx_mfa_attempts_user_id.
CREATE INDEX mfa_attempts_user_id_attempted_at_idx ON mfa_attempts (user_id, attempted_at DESC);
-- Retention: the cleanup deletes old attempts across all users.
CREATE INDEX mfa_attempts_attempted_at_idx ON mfa_attempts (attempted_at);
