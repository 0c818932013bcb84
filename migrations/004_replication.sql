-- 004_replication.sql: replication monitoring and failover history (planning document,
-- section 4.4), plus the write canary the failover manager uses to prove a node takes
-- writes and that a rejoined replica really receives them.
--
-- Differences from the planning sketch, and why:
-- - replication_status keeps ONE current row per node (unique node_name, upserted by the
--   failover coordinator on every monitoring cycle) instead of an ever-growing log; the
--   history of what happened lives in failover_history.
-- - the sketch's single replication_lag column becomes lag_bytes and lag_seconds, next to
--   the sent / write / flush / replay LSNs the monitor reads (pg_lsn), the WAL-receiver
--   state, the sync state and the timeline; metadata keeps the rest (the monitor's
--   one-sentence reason, alert state).
-- - failover_history records the kind (failover, switchover, rejoin, fence, bootstrap),
--   the epoch of the primary it published and the fencing token of the failover lease the
--   decision was taken under; times are TIMESTAMPTZ as everywhere else.

CREATE TABLE replication_status (
  id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  node_name        VARCHAR(100) NOT NULL,
  -- primary, replica, or unknown (unreachable: role not observed this cycle).
  node_role        VARCHAR(50) NOT NULL,
  node_address     VARCHAR(255) NOT NULL,
  -- streaming, catchup, startup, stopped, fenced, unreachable, ... (see actors/failover).
  node_state       VARCHAR(50) NOT NULL DEFAULT 'unknown',
  is_healthy       BOOLEAN NOT NULL DEFAULT true,
  -- bytes of WAL the node's replay is behind the primary's current WAL position.
  replication_lag  BIGINT,
  lag_seconds      DOUBLE PRECISION,
  sent_lsn         PG_LSN,
  write_lsn        PG_LSN,
  flush_lsn        PG_LSN,
  replay_lsn       PG_LSN,
  sync_state       VARCHAR(20),
  timeline         INTEGER,
  epoch            BIGINT,
  last_checked_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  metadata         JSONB NOT NULL DEFAULT '{}'::jsonb,
  CONSTRAINT replication_status_role CHECK (node_role IN ('primary', 'replica', 'unknown')),
  CONSTRAINT replication_status_name_format CHECK (node_name ~ '^[A-Za-z0-9_.-]{1,100}$'),
  CONSTRAINT replication_status_lag_nonnegative CHECK (replication_lag IS NULL OR replication_lag >= 0)
);

CREATE UNIQUE INDEX idx_replication_status_node_name ON replication_status (node_name);

CREATE TABLE failover_history (
  id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  kind           VARCHAR(20) NOT NULL DEFAULT 'failover',
  old_primary    VARCHAR(100) NOT NULL,
  new_primary    VARCHAR(100) NOT NULL,
  -- The decision's one-sentence reason ("promoted pg2 because ...").
  reason         TEXT,
  -- Instance id of the coordinator that decided (or the admin API caller).
  initiated_by   VARCHAR(100),
  started_at     TIMESTAMPTZ NOT NULL,
  completed_at   TIMESTAMPTZ,
  status         VARCHAR(50) NOT NULL,
  error_message  TEXT,
  epoch          BIGINT,
  fencing_token  BIGINT,
  details        JSONB NOT NULL DEFAULT '{}'::jsonb,
  CONSTRAINT failover_history_kind CHECK (
    kind IN ('bootstrap', 'failover', 'switchover', 'rejoin', 'fence')
  ),
  CONSTRAINT failover_history_status CHECK (
    status IN ('in_progress', 'completed', 'failed', 'fenced')
  ),
  CONSTRAINT failover_history_times CHECK (completed_at IS NULL OR completed_at >= started_at)
);

CREATE INDEX idx_failover_history_started_at ON failover_history (started_at);

-- One row per accepted canary write: which instance wrote it, to which node and epoch.
-- Operators (POST /replication/canary) and the failover tests use it to see where writes
-- land and that none is lost; the coordinator writes one to verify a rejoined replica.
CREATE TABLE replication_canary (
  id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  instance    VARCHAR(100) NOT NULL,
  node_name   VARCHAR(100),
  epoch       BIGINT,
  note        VARCHAR(200),
  written_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
