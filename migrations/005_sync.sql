-- 005_sync.sql: state synchronisation between instances (machines/sync_node.ts,
-- actors/sync/, store/sync.ts; docs/sync.md describes the behaviour).
--
-- Where the sync node keeps its data:
-- - Deltas: event_log rows with aggregate_type 'sync.batch', aggregate_id = the origin
--   (one process incarnation) and version = the origin's batch sequence number. Each
--   origin is the only writer of its aggregate, so the per-aggregate version is exactly
--   the gap-free sequence peers check, and the existing unique index serves "batches of
--   origin O after N".
-- - Snapshots: snapshots rows with aggregate_type 'sync:<entity type>' and version = the
--   snapshot round, the CRDT state gzip-compressed in the columns added below. A round's
--   checkpoint (the version vector every latest snapshot covers) is the snapshot of
--   aggregate ('sync.checkpoint', 'cluster') at the same version.
-- - Origins and unmergeable conflicts: the two tables below.

-- ---------------------------------------------------------------------------
-- snapshots: compressed state
-- ---------------------------------------------------------------------------
ALTER TABLE snapshots
  -- NULL: `state` holds the state itself (event_store.ts); 'gzip': `compressed` does,
  -- and `state` only a small JSON header describing it.
  ADD COLUMN encoding    TEXT,
  ADD COLUMN compressed  BYTEA,
  ADD CONSTRAINT snapshots_encoding_valid CHECK (encoding IN ('gzip')),
  ADD CONSTRAINT snapshots_compressed_has_encoding CHECK ((encoding IS NULL) = (compressed IS NULL));

-- ---------------------------------------------------------------------------
-- sync_origins: every process incarnation that wrote deltas
-- ---------------------------------------------------------------------------
CREATE TABLE sync_origins (
  -- `<instance id>~<random>`: a restarted instance is a new origin with a fresh sequence,
  -- so a sequence number is never reused for a different batch.
  origin         TEXT PRIMARY KEY,
  instance_id    TEXT NOT NULL,
  started_at     TIMESTAMPTZ NOT NULL,
  -- Every batch up to this sequence number is in event_log.
  persisted_seq  INTEGER NOT NULL DEFAULT 0,
  persisted_at   TIMESTAMPTZ,
  CONSTRAINT sync_origins_origin_length CHECK (char_length(origin) BETWEEN 1 AND 200),
  CONSTRAINT sync_origins_instance_length CHECK (char_length(instance_id) BETWEEN 1 AND 128),
  CONSTRAINT sync_origins_persisted_non_negative CHECK (persisted_seq >= 0)
);

-- ---------------------------------------------------------------------------
-- sync_conflicts: concurrent writes no merge strategy can reconcile
-- ---------------------------------------------------------------------------
CREATE TABLE sync_conflicts (
  id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  entity_type  TEXT NOT NULL,
  entity_id    TEXT NOT NULL,
  field        TEXT NOT NULL,
  -- Entity, field and the sorted dots of the competing writes: every instance that notices
  -- the same conflict computes the same key, so it is recorded once.
  conflict_key TEXT NOT NULL,
  -- The competing writes: [{value, origin, dot, hlc}], and the one kept provisionally
  -- (last writer wins) until an operator resolves the conflict.
  candidates   JSONB NOT NULL,
  winner       JSONB NOT NULL,
  detected_by  TEXT NOT NULL,
  detected_at  TIMESTAMPTZ NOT NULL,
  status       TEXT NOT NULL DEFAULT 'open',
  resolved_at  TIMESTAMPTZ,
  resolved_by  TEXT,
  resolution   JSONB,
  CONSTRAINT sync_conflicts_key UNIQUE (conflict_key),
  CONSTRAINT sync_conflicts_status_valid CHECK (status IN ('open', 'resolved')),
  CONSTRAINT sync_conflicts_resolved_consistent CHECK (
    (status = 'resolved') = (resolved_at IS NOT NULL)
  ),
  CONSTRAINT sync_conflicts_entity_type_length CHECK (char_length(entity_type) BETWEEN 1 AND 100),
  CONSTRAINT sync_conflicts_entity_id_length CHECK (char_length(entity_id) BETWEEN 1 AND 200),
  CONSTRAINT sync_conflicts_field_length CHECK (char_length(field) BETWEEN 1 AND 100)
);

-- The operators' queue: open conflicts, oldest first.
CREATE INDEX sync_conflicts_open_idx ON sync_conflicts (detected_at, id) WHERE status = 'open';
CREATE INDEX sync_conflicts_entity_idx ON sync_conflicts (entity_type, entity_id);
