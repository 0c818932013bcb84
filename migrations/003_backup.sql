-- 003_backup.sql: the history of database backups (planning document section 3.4).
--
-- One row per backup run, written by store/backup_history.ts: inserted `in_progress` when a
-- run starts, then `completed` (stored, checksummed) or `failed` (with the reason). A
-- completed backup that passed its test-restore has `verified_at`; a backup removed by the
-- retention policy keeps its row with `deleted_at`, so the history stays complete.
--
-- Backup types (docs/backup.md defines them precisely):
--   full          logical dump of the database (pg_dump custom format), self-contained
--   base          physical base backup of the cluster (pg_basebackup), self-contained
--   incremental   archived WAL since the previous base or incremental of the same chain
--   differential  archived WAL since the base backup (cumulative)
-- The planning document lists full / incremental / differential; `base` is added because a
-- physical base backup is what incremental and differential WAL backups are applied to.

CREATE TABLE backup_history (
  id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- The backup's folder in the backup storage, e.g. 20250115T020000Z-full-3fa9c1; it
  -- names the backup on a machine that has the storage but not this table.
  name               TEXT NOT NULL,
  backup_type        VARCHAR(50) NOT NULL,
  -- Where it is stored: file:///var/backups/rootstream/<name>/ or s3://bucket/prefix/<name>/
  backup_path        VARCHAR(500) NOT NULL,
  -- Bytes read from PostgreSQL (before compression); 0 until the run completes.
  backup_size        BIGINT NOT NULL DEFAULT 0,
  -- Bytes stored (compressed and encrypted).
  compressed_size    BIGINT,
  encryption_method  VARCHAR(50),
  status             VARCHAR(50) NOT NULL DEFAULT 'in_progress',
  started_at         TIMESTAMPTZ NOT NULL,
  completed_at       TIMESTAMPTZ,
  error_message      TEXT,
  -- The manifest summary: files with sizes and SHA-256, WAL range, row counts, tool versions.
  metadata           JSONB NOT NULL DEFAULT '{}',
  -- The base backup an incremental or differential backup applies to.
  parent_id          BIGINT REFERENCES backup_history (id),
  -- What started it: a cron schedule, a schedule missed while no instance held the
  -- scheduler lease (run once at takeover), a person (CLI / HTTP), or a retry.
  trigger            VARCHAR(20) NOT NULL DEFAULT 'manual',
  instance_id        TEXT,
  verified_at        TIMESTAMPTZ,
  -- The last verification's typed result (checksums and test-restore probes).
  verification       JSONB,
  deleted_at         TIMESTAMPTZ,
  CONSTRAINT backup_history_name_key UNIQUE (name),
  CONSTRAINT backup_history_name_format CHECK (name ~ '^[0-9]{8}T[0-9]{6}Z-[a-z]+-[0-9a-f]{6}$'),
  CONSTRAINT valid_backup_type CHECK (
    backup_type IN ('full', 'base', 'incremental', 'differential')
  ),
  CONSTRAINT valid_status CHECK (status IN ('in_progress', 'completed', 'failed')),
  CONSTRAINT backup_history_trigger_valid CHECK (
    trigger IN ('schedule', 'missed', 'manual', 'retry')
  ),
  CONSTRAINT backup_history_encryption_valid CHECK (
    encryption_method IN ('aes-256-cbc+hmac-sha256')
  ),
  CONSTRAINT backup_history_sizes_non_negative CHECK (
    backup_size >= 0 AND (compressed_size IS NULL OR compressed_size >= 0)
  ),
  CONSTRAINT backup_history_completed_complete CHECK (
    status <> 'completed' OR (completed_at IS NOT NULL AND compressed_size IS NOT NULL)
  ),
  CONSTRAINT backup_history_failed_has_error CHECK (
    status <> 'failed' OR error_message IS NOT NULL
  ),
  CONSTRAINT backup_history_in_progress_open CHECK (
    status <> 'in_progress' OR completed_at IS NULL
  ),
  CONSTRAINT backup_history_completed_after_start CHECK (completed_at >= started_at),
  CONSTRAINT backup_history_verified_completed CHECK (
    verified_at IS NULL OR status = 'completed'
  ),
  CONSTRAINT backup_history_parent_for_wal CHECK (
    (backup_type IN ('incremental', 'differential')) = (parent_id IS NOT NULL)
  ),
  CONSTRAINT backup_history_path_length CHECK (char_length(backup_path) BETWEEN 1 AND 500),
  CONSTRAINT backup_history_error_length CHECK (char_length(error_message) <= 4000)
);

CREATE INDEX idx_backup_history_started_at ON backup_history (started_at);
CREATE INDEX idx_backup_history_status ON backup_history (status);
-- The scheduler's "last run of each type" and the retention policy's per-type listing.
CREATE INDEX backup_history_type_started_idx ON backup_history (backup_type, started_at DESC);
CREATE INDEX backup_history_parent_idx ON backup_history (parent_id) WHERE parent_id IS NOT NULL;
