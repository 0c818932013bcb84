-- 001_initial_schema.sql: the initial RootStream Runtime schema (Phase 24.2 data layer).
--
-- Tables: users, sessions, streams, stream_sessions, recordings, usage_logs,
-- billing_accounts, event_log, snapshots, plus the set_updated_at() trigger function.
--
-- Runs on PostgreSQL 15+ and on PGlite (PostgreSQL 18 in wasm). The migrations runner
-- (store/migrations.ts) wraps this file in one transaction, so it has no BEGIN/COMMIT,
-- no psql meta-commands and no CREATE INDEX CONCURRENTLY.
--
-- Conventions: ids are BIGINT identities (sessions use random UUIDs, because a session
-- id travels to clients and must not be guessable or reveal how many sessions exist);
-- times are TIMESTAMPTZ; every length / range rule the application validates is also
-- a CHECK here, so a bug or a manual UPDATE cannot store what the code would refuse.

-- Keeps updated_at honest for every writer, including manual fixes in psql.
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END;
$$;

-- ---------------------------------------------------------------------------
-- users
-- ---------------------------------------------------------------------------
CREATE TABLE users (
  id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  username       TEXT NOT NULL,
  email          TEXT NOT NULL,
  -- A PHC-style scrypt string from lib/password.ts, never a plain password.
  password_hash  TEXT NOT NULL,
  display_name   TEXT,
  avatar_url     TEXT,
  is_verified    BOOLEAN NOT NULL DEFAULT false,
  is_active      BOOLEAN NOT NULL DEFAULT true,
  last_login_at  TIMESTAMPTZ,
  created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT users_username_format CHECK (username ~ '^[A-Za-z0-9_.-]{3,32}$'),
  CONSTRAINT users_email_format CHECK (
    char_length(email) <= 254 AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$'
  ),
  CONSTRAINT users_password_hash_format CHECK (
    char_length(password_hash) BETWEEN 1 AND 512 AND password_hash LIKE '$%'
  ),
  CONSTRAINT users_display_name_length CHECK (char_length(display_name) <= 100),
  CONSTRAINT users_avatar_url_length CHECK (char_length(avatar_url) <= 2048)
);

-- Case-insensitive uniqueness: "Alice" and "alice" are one account, and so are two
-- spellings of one mailbox. store/users.ts maps violations of these names to USER_EXISTS.
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TRIGGER users_set_updated_at BEFORE UPDATE ON users
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- ---------------------------------------------------------------------------
-- sessions (login sessions; migration 002 adds device and network columns)
-- ---------------------------------------------------------------------------
CREATE TABLE sessions (
  id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  -- SHA-256 of the bearer token: a leaked table or backup does not yield usable tokens.
  token_hash  BYTEA NOT NULL UNIQUE,
  -- No CHECK (expires_at > created_at): expiry comes from the runtime's injected clock,
  -- which tests (and a skewed host) may set behind the database clock.
  expires_at  TIMESTAMPTZ NOT NULL,
  created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT sessions_token_hash_length CHECK (octet_length(token_hash) = 32)
);

-- "Sessions of this user that are still valid" (listing, per-user limits, revoke-all).
CREATE INDEX sessions_user_id_expires_at_idx ON sessions (user_id, expires_at);
-- The periodic cleanup deletes by expiry across all users.
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

CREATE TRIGGER sessions_set_updated_at BEFORE UPDATE ON sessions
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- ---------------------------------------------------------------------------
-- streams
-- ---------------------------------------------------------------------------
CREATE TABLE streams (
  id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id            BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  name               TEXT NOT NULL,
  description        TEXT,
  -- The stream key is a bearer secret shown once; only its SHA-256 is kept, plus a
  -- short prefix so owners can tell which key is configured in their encoder.
  stream_key_hash    BYTEA NOT NULL UNIQUE,
  stream_key_prefix  TEXT NOT NULL,
  is_public          BOOLEAN NOT NULL DEFAULT true,
  is_live            BOOLEAN NOT NULL DEFAULT false,
  viewer_count       INTEGER NOT NULL DEFAULT 0,
  bitrate_kbps       INTEGER,
  fps                INTEGER,
  resolution         TEXT,
  codec              TEXT,
  thumbnail_url      TEXT,
  started_at         TIMESTAMPTZ,
  ended_at           TIMESTAMPTZ,
  created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT streams_name_length CHECK (char_length(name) BETWEEN 1 AND 200),
  CONSTRAINT streams_description_length CHECK (char_length(description) <= 5000),
  CONSTRAINT streams_key_hash_length CHECK (octet_length(stream_key_hash) = 32),
  CONSTRAINT streams_key_prefix_length CHECK (char_length(stream_key_prefix) BETWEEN 1 AND 16),
  CONSTRAINT streams_viewer_count_non_negative CHECK (viewer_count >= 0),
  CONSTRAINT streams_bitrate_range CHECK (bitrate_kbps BETWEEN 0 AND 1000000),
  CONSTRAINT streams_fps_range CHECK (fps BETWEEN 0 AND 1000),
  CONSTRAINT streams_resolution_format CHECK (resolution ~ '^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$'),
  CONSTRAINT streams_codec_length CHECK (char_length(codec) BETWEEN 1 AND 32),
  CONSTRAINT streams_thumbnail_url_length CHECK (char_length(thumbnail_url) <= 2048),
  CONSTRAINT streams_live_has_started CHECK (NOT is_live OR started_at IS NOT NULL),
  CONSTRAINT streams_ended_after_started CHECK (ended_at >= started_at)
);

CREATE INDEX streams_user_id_idx ON streams (user_id);
-- Only a small fraction of streams is live at any moment; the directory page lists
-- them by audience, so a partial index keeps that query cheap and the index tiny.
CREATE INDEX streams_live_idx ON streams (viewer_count DESC, id) WHERE is_live;

CREATE TRIGGER streams_set_updated_at BEFORE UPDATE ON streams
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- ---------------------------------------------------------------------------
-- stream_sessions (one row per broadcast of a stream)
-- ---------------------------------------------------------------------------
CREATE TABLE stream_sessions (
  id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  stream_id          BIGINT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
  started_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
  ended_at           TIMESTAMPTZ,
  -- Derived by the database so it can never disagree with the two timestamps.
  duration_seconds   INTEGER GENERATED ALWAYS AS (
    floor(extract(epoch FROM (ended_at - started_at)))::integer
  ) STORED,
  total_viewers      INTEGER NOT NULL DEFAULT 0,
  peak_viewers       INTEGER NOT NULL DEFAULT 0,
  bytes_transferred  BIGINT NOT NULL DEFAULT 0,
  is_recorded        BOOLEAN NOT NULL DEFAULT false,
  created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT stream_sessions_ended_after_started CHECK (ended_at >= started_at),
  CONSTRAINT stream_sessions_total_viewers_non_negative CHECK (total_viewers >= 0),
  CONSTRAINT stream_sessions_peak_viewers_non_negative CHECK (peak_viewers >= 0),
  CONSTRAINT stream_sessions_bytes_non_negative CHECK (bytes_transferred >= 0)
);

CREATE INDEX stream_sessions_stream_id_started_at_idx
  ON stream_sessions (stream_id, started_at DESC);
-- A stream broadcasts at most once at a time; two open sessions would double-count
-- viewers and bytes, so the database refuses the second one.
CREATE UNIQUE INDEX stream_sessions_one_open_per_stream_key
  ON stream_sessions (stream_id) WHERE ended_at IS NULL;

CREATE TRIGGER stream_sessions_set_updated_at BEFORE UPDATE ON stream_sessions
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- ---------------------------------------------------------------------------
-- recordings
-- ---------------------------------------------------------------------------
CREATE TABLE recordings (
  id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  stream_id          BIGINT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
  stream_session_id  BIGINT REFERENCES stream_sessions (id) ON DELETE CASCADE,
  file_path          TEXT NOT NULL,
  file_size_bytes    BIGINT,
  duration_seconds   INTEGER,
  codec              TEXT,
  resolution         TEXT,
  fps                INTEGER,
  bitrate_kbps       INTEGER,
  is_processed       BOOLEAN NOT NULL DEFAULT false,
  is_available       BOOLEAN NOT NULL DEFAULT true,
  expires_at         TIMESTAMPTZ,
  created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT recordings_file_path_length CHECK (char_length(file_path) BETWEEN 1 AND 1024),
  CONSTRAINT recordings_file_size_non_negative CHECK (file_size_bytes >= 0),
  CONSTRAINT recordings_duration_non_negative CHECK (duration_seconds >= 0),
  CONSTRAINT recordings_codec_length CHECK (char_length(codec) BETWEEN 1 AND 32),
  CONSTRAINT recordings_resolution_format CHECK (
    resolution ~ '^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$'
  ),
  CONSTRAINT recordings_fps_range CHECK (fps BETWEEN 0 AND 1000),
  CONSTRAINT recordings_bitrate_range CHECK (bitrate_kbps BETWEEN 0 AND 1000000)
);

CREATE INDEX recordings_stream_id_idx ON recordings (stream_id, created_at DESC);
CREATE INDEX recordings_stream_session_id_idx ON recordings (stream_session_id);
-- Retention sweeps look only at recordings that can expire.
CREATE INDEX recordings_expires_at_idx ON recordings (expires_at) WHERE expires_at IS NOT NULL;

CREATE TRIGGER recordings_set_updated_at BEFORE UPDATE ON recordings
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- ---------------------------------------------------------------------------
-- usage_logs (append-only usage records that billing is computed from)
-- ---------------------------------------------------------------------------
CREATE TABLE usage_logs (
  id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id            BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  -- SET NULL: deleting a stream must not erase usage that was (or will be) billed.
  stream_id          BIGINT REFERENCES streams (id) ON DELETE SET NULL,
  event_type         TEXT NOT NULL,
  bytes_transferred  BIGINT NOT NULL DEFAULT 0,
  duration_seconds   INTEGER NOT NULL DEFAULT 0,
  metadata           JSONB NOT NULL DEFAULT '{}'::jsonb,
  created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT usage_logs_event_type_valid CHECK (
    event_type IN (
      'stream_start', 'stream_end', 'viewer_join', 'viewer_leave',
      'bandwidth', 'recording_storage'
    )
  ),
  CONSTRAINT usage_logs_bytes_non_negative CHECK (bytes_transferred >= 0),
  CONSTRAINT usage_logs_duration_non_negative CHECK (duration_seconds >= 0)
);

-- Billing sums a user's usage over a period.
CREATE INDEX usage_logs_user_id_created_at_idx ON usage_logs (user_id, created_at DESC);
CREATE INDEX usage_logs_stream_id_idx ON usage_logs (stream_id) WHERE stream_id IS NOT NULL;
CREATE INDEX usage_logs_event_type_created_at_idx ON usage_logs (event_type, created_at DESC);

-- ---------------------------------------------------------------------------
-- billing_accounts (one per user)
-- ---------------------------------------------------------------------------
CREATE TABLE billing_accounts (
  id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id               BIGINT NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
  plan                  TEXT NOT NULL DEFAULT 'free',
  status                TEXT NOT NULL DEFAULT 'active',
  payment_method        TEXT,
  monthly_limit_gb      INTEGER,
  current_period_start  TIMESTAMPTZ,
  current_period_end    TIMESTAMPTZ,
  created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT billing_accounts_plan_valid CHECK (plan IN ('free', 'pro', 'enterprise')),
  CONSTRAINT billing_accounts_status_valid CHECK (
    status IN ('active', 'trialing', 'past_due', 'suspended', 'canceled')
  ),
  CONSTRAINT billing_accounts_payment_method_valid CHECK (
    payment_method IN ('credit_card', 'paypal', 'invoice')
  ),
  CONSTRAINT billing_accounts_monthly_limit_non_negative CHECK (monthly_limit_gb >= 0),
  CONSTRAINT billing_accounts_period_order CHECK (current_period_end >= current_period_start)
);

CREATE INDEX billing_accounts_plan_status_idx ON billing_accounts (plan, status);

CREATE TRIGGER billing_accounts_set_updated_at BEFORE UPDATE ON billing_accounts
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- ---------------------------------------------------------------------------
-- event_log (event sourcing and audit trail; append-only)
-- ---------------------------------------------------------------------------
CREATE TABLE event_log (
  id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  aggregate_type  TEXT NOT NULL,
  -- TEXT because aggregates are keyed by numeric ids (streams) and string ids (sessions).
  aggregate_id    TEXT NOT NULL,
  version         INTEGER NOT NULL,
  event_type      TEXT NOT NULL,
  event_data      JSONB NOT NULL DEFAULT '{}'::jsonb,
  metadata        JSONB NOT NULL DEFAULT '{}'::jsonb,
  -- SET NULL: the audit trail outlives the account that caused it.
  user_id         BIGINT REFERENCES users (id) ON DELETE SET NULL,
  created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT event_log_aggregate_type_length CHECK (char_length(aggregate_type) BETWEEN 1 AND 100),
  CONSTRAINT event_log_aggregate_id_length CHECK (char_length(aggregate_id) BETWEEN 1 AND 200),
  CONSTRAINT event_log_event_type_length CHECK (char_length(event_type) BETWEEN 1 AND 100),
  CONSTRAINT event_log_version_positive CHECK (version >= 1),
  -- The optimistic-concurrency guard: two writers that both read version N cannot
  -- both append version N + 1. It also serves reads of one aggregate in order.
  CONSTRAINT event_log_aggregate_version_key UNIQUE (aggregate_type, aggregate_id, version)
);

CREATE INDEX event_log_user_id_created_at_idx ON event_log (user_id, created_at DESC)
  WHERE user_id IS NOT NULL;
CREATE INDEX event_log_event_type_created_at_idx ON event_log (event_type, created_at DESC);
CREATE INDEX event_log_created_at_idx ON event_log (created_at);

-- ---------------------------------------------------------------------------
-- snapshots (event-sourcing state at a version, so loads skip old events)
-- ---------------------------------------------------------------------------
CREATE TABLE snapshots (
  id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  aggregate_type  TEXT NOT NULL,
  aggregate_id    TEXT NOT NULL,
  version         INTEGER NOT NULL,
  state           JSONB NOT NULL,
  created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT snapshots_aggregate_type_length CHECK (char_length(aggregate_type) BETWEEN 1 AND 100),
  CONSTRAINT snapshots_aggregate_id_length CHECK (char_length(aggregate_id) BETWEEN 1 AND 200),
  CONSTRAINT snapshots_version_positive CHECK (version >= 1),
  -- Also serves "latest snapshot of this aggregate" as a backward index scan.
  CONSTRAINT snapshots_aggregate_version_key UNIQUE (aggregate_type, aggregate_id, version)
);
