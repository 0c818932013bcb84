-- 008_backup_base_parent.sql: a file-level incremental base backup (docs/backup.md) records
-- the base backup it references as its parent, like a WAL backup records its base.
--
-- Before: a parent only on WAL backups (incremental, differential), and always on them.
-- Now: WAL backups still always have one, full (logical) backups never, base backups may
-- (the root of a chain and plain base backups have none). Numbered 008: 007 is taken on main.

ALTER TABLE backup_history DROP CONSTRAINT backup_history_parent_for_wal;

ALTER TABLE backup_history ADD CONSTRAINT backup_history_parent_by_type CHECK (
  CASE backup_type
    WHEN 'incremental' THEN parent_id IS NOT NULL
    WHEN 'differential' THEN parent_id IS NOT NULL
    WHEN 'full' THEN parent_id IS NULL
    ELSE true
  END
);
