/**
 * SQL of the failover manager: the pools it opens on each PostgreSQL node
 * ({@linkcode openNodePool}), what it reads from each node (recovery state, LSNs,
 * pg_stat_replication, WAL receiver, synchronous standbys, where the node runs), the
 * administrative statements it sends (promote, fence, re-point a replica, synchronous
 * standbys), and the replication_status / failover_history / replication_canary tables.
 *
 * Everything is parameterised except ALTER SYSTEM, which PostgreSQL does not let take bind
 * parameters: its values go through {@linkcode quoteLiteral}, which only accepts the
 * characters node names and connection strings built by the failover manager can contain.
 * @module
 */
import { pgConnectArgs } from "./pg_tls.ts";
import postgres from "postgres";
import { RuntimeError } from "../lib/errors.ts";
import { pgCode } from "../lib/db_errors.ts";
import type { Sql } from "./types.ts";

/**
 * A pool of `max` connections straight to one node (not through the runtime's pool, which
 * only ever points at the published primary), opened lazily, failing fast: the failover
 * manager's probes and administration (actors/failover/nodes.ts puts a time limit on each
 * call and drops a pool that hangs).
 */
export function openNodePool(url: string, options: { max: number; applicationName: string }): Sql {
  const tls = pgConnectArgs(url);
  return postgres(tls.url, {
    ...tls.options,
    max: options.max,
    connect_timeout: 3,
    // Every call tries a fresh connection: postgres.js would otherwise wait out a reconnect
    // backoff growing to 20 s after repeated failures, so a node that refuses connections
    // would read "no answer within N ms" after a few probes (and close() would leave that
    // timer running). The probe interval already paces the attempts.
    backoff: () => 0,
    idle_timeout: 60,
    max_lifetime: null,
    // No array-types query on connect: postgres.js drops that query's promise, so a
    // connection cut during it (a timed-out probe of a stalled node ends its pool) rejects
    // with nobody listening and ends the process (porsager/postgres#1192). These pools
    // never send or read arrays.
    fetch_types: false,
    onnotice: () => {},
    connection: { application_name: options.applicationName },
  }) as Sql;
}

/** What one node says about itself. */
export interface NodeState {
  /** pg_is_in_recovery(). */
  inRecovery: boolean;
  /** default_transaction_read_only is on (fenced). */
  readOnly: boolean;
  /** Primary: pg_current_wal_lsn(). */
  currentLsn: string | null;
  /** Replica: pg_last_wal_receive_lsn(). */
  receiveLsn: string | null;
  /** Replica: pg_last_wal_replay_lsn(). */
  replayLsn: string | null;
  /** Replica: seconds since the last replayed transaction committed on the primary. */
  replayAgeS: number | null;
  /** Timeline: the primary's current one, a replica's received (or replayed) one. */
  timeline: number | null;
  /** Replica: WAL receiver status (streaming, stopping, …) or null when none runs. */
  receiverStatus: string | null;
  /** Replica: host:port the WAL receiver streams from. */
  sender: string | null;
  /** synchronous_standby_names as set. */
  syncStandbyNames: string;
  /** synchronous_commit as set. */
  syncCommit: string;
  /** cluster_name. */
  clusterName: string;
}

/** One row of a primary's pg_stat_replication. */
export interface ReplicationRow {
  /** application_name (the standby's node name). */
  applicationName: string;
  /** startup, catchup, streaming, backup, stopping. */
  state: string;
  /** async, potential, sync, quorum. */
  syncState: string;
  /** LSNs as text. */
  sentLsn: string | null;
  /** LSNs as text. */
  writeLsn: string | null;
  /** LSNs as text. */
  flushLsn: string | null;
  /** LSNs as text. */
  replayLsn: string | null;
  /** Bytes between the primary's current LSN and the standby's replay LSN. */
  lagBytes: number | null;
  /** replay_lag in seconds (null when idle and caught up). */
  lagSeconds: number | null;
}

/** Where a server runs, to tell whether this host can stop / rewind / start it. */
export interface NodeIdentity {
  /** data_directory. */
  dataDir: string;
  /** port. */
  port: number;
  /** pg_postmaster_start_time() as ms since the epoch. */
  startedAt: number;
  /** Settings given on the postmaster's command line (port, socket dir, cluster_name, …). */
  commandLine: Record<string, string>;
}

/** Reads a node's own view: recovery, fence, LSNs, timeline, WAL receiver, sync settings. */
export async function readNodeState(sql: Sql): Promise<NodeState> {
  const [row] = await sql`
    SELECT pg_is_in_recovery() AS in_recovery,
           current_setting('default_transaction_read_only') = 'on' AS read_only,
           CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END AS current_lsn,
           pg_last_wal_receive_lsn()::text AS receive_lsn,
           pg_last_wal_replay_lsn()::text AS replay_lsn,
           extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_age_s,
           CASE WHEN NOT pg_is_in_recovery()
                THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
                ELSE coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                              (SELECT timeline_id FROM pg_control_checkpoint()))
           END AS timeline,
           (SELECT status FROM pg_stat_wal_receiver) AS receiver_status,
           (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver) AS sender,
           current_setting('synchronous_standby_names') AS sync_names,
           current_setting('synchronous_commit') AS sync_commit,
           current_setting('cluster_name') AS cluster_name`;
  return {
    inRecovery: row.in_recovery,
    readOnly: row.read_only,
    currentLsn: row.current_lsn,
    receiveLsn: row.receive_lsn,
    replayLsn: row.replay_lsn,
    replayAgeS: row.replay_age_s,
    timeline: row.timeline,
    receiverStatus: row.receiver_status,
    sender: row.sender,
    syncStandbyNames: row.sync_names,
    syncCommit: row.sync_commit,
    clusterName: row.cluster_name,
  };
}

/** A primary's pg_stat_replication, with lag in bytes from its current LSN. */
export async function readReplicationRows(sql: Sql): Promise<ReplicationRow[]> {
  const rows = await sql`
    SELECT application_name, state, sync_state,
           sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text,
           pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 AS lag_bytes,
           extract(epoch FROM replay_lag)::float8 AS lag_seconds
      FROM pg_stat_replication
     ORDER BY application_name`;
  return rows.map((r) => ({
    applicationName: r.application_name,
    state: r.state,
    syncState: r.sync_state,
    sentLsn: r.sent_lsn,
    writeLsn: r.write_lsn,
    flushLsn: r.flush_lsn,
    replayLsn: r.replay_lsn,
    lagBytes: r.lag_bytes === null ? null : Math.max(0, Math.round(r.lag_bytes)),
    lagSeconds: r.lag_seconds,
  }));
}

/** Where the server runs (superuser only): data directory, port, start time, command line. */
export async function readNodeIdentity(sql: Sql): Promise<NodeIdentity> {
  const [row] = await sql`
    SELECT current_setting('data_directory') AS data_dir,
           current_setting('port')::int AS port,
           (extract(epoch FROM pg_postmaster_start_time()) * 1000)::float8 AS started_ms`;
  const settings = await sql`
    SELECT name, current_setting(name) AS value FROM pg_settings WHERE source = 'command line'`;
  return {
    dataDir: row.data_dir,
    port: row.port,
    startedAt: Math.round(row.started_ms),
    commandLine: Object.fromEntries(settings.map((s) => [s.name, s.value])),
  };
}

/** The distance in bytes from `from` to `to` (positive when `to` is ahead). */
export async function lsnDiff(sql: Sql, to: string, from: string): Promise<number> {
  const [row] = await sql`SELECT pg_wal_lsn_diff(${to}::pg_lsn, ${from}::pg_lsn)::float8 AS d`;
  return row.d;
}

/**
 * Promotes a replica and waits for it to accept writes; false when it did not finish in
 * time (or the postmaster could not be signalled). `pg_promote(true)` looks whether recovery
 * ended only every 100 ms, most of a promotion's time on a small cluster: this asks without
 * waiting and looks every `pollMs` (10) instead.
 *
 * While recovery goes on, the startup process is woken again every `resignalMs` (25): in
 * PostgreSQL 15 a promote request it took while waiting for streamed WAL counts as a failed
 * stream, and after a stream failure it sleeps out what is left of
 * `wal_retrieve_retry_interval` (5 s by default; a WAL receiver that cannot reach the dead
 * primary fails every interval) before it looks at the request again. Seen here: with the
 * reload `preparePromotion` makes just before, about half of the promotions 0.1–0.6 s after a
 * kill took 0.5 s (the interval of the test clusters) instead of 25 ms. The wake-up is a
 * configuration reload (its SIGHUP sets the startup process's latch; nothing changed, so
 * nothing else happens), or the request again while its `promote` file is still there (not
 * taken yet).
 */
export async function promoteNode(
  sql: Sql,
  options: { waitS?: number; pollMs?: number; resignalMs?: number } = {},
): Promise<boolean> {
  const [row] = await sql`SELECT pg_promote(false) AS signalled`;
  if (!row.signalled) return false;
  const deadline = Date.now() + (options.waitS ?? 60) * 1000;
  let signalledAt = Date.now();
  while (await isInRecovery(sql)) {
    if (Date.now() >= deadline) return false;
    if (Date.now() - signalledAt >= (options.resignalMs ?? 25)) {
      signalledAt = Date.now();
      try {
        await sql`
          SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL
                      WHEN pg_stat_file('promote', true) IS NOT NULL THEN pg_promote(false)
                      ELSE pg_reload_conf() END AS woken`;
      } catch (err) {
        // Recovery ended between the check and the signal: the loop sees it.
        if (pgCode(err) !== "55000") throw err;
      }
    }
    await new Promise((r) => setTimeout(r, options.pollMs ?? 10));
  }
  return true;
}

/** Quotes a value for ALTER SYSTEM, refusing anything but plain conninfo / name characters. */
export function quoteLiteral(value: string): string {
  if (!/^[A-Za-z0-9_.,:/@= ()"*-]*$/.test(value)) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Refused to write a PostgreSQL setting: ${JSON.stringify(value)} has characters ` +
        'outside letters, digits and _.,:/@=()"*- and spaces',
    );
  }
  return `'${value}'`;
}

const SETTING_NAMES = new Set([
  "synchronous_standby_names",
  "synchronous_commit",
  "default_transaction_read_only",
  "primary_conninfo",
  "primary_slot_name",
]);

/** ALTER SYSTEM SET (or RESET, for null) the named settings, then reloads the configuration. */
export async function alterSystem(
  sql: Sql,
  settings: Record<string, string | null>,
): Promise<void> {
  for (const [name, value] of Object.entries(settings)) {
    if (!SETTING_NAMES.has(name)) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Refused to ALTER SYSTEM unknown setting ${name}`,
      );
    }
    await sql.unsafe(
      value === null
        ? `ALTER SYSTEM RESET ${name}`
        : `ALTER SYSTEM SET ${name} = ${quoteLiteral(value)}`,
    );
  }
  await sql`SELECT pg_reload_conf()`;
}

/**
 * Fences a node: new transactions are read-only (persisted, so a restart keeps it fenced)
 * and every other client backend is terminated, so nothing writes through it any more.
 * Returns how many sessions were ended.
 */
export async function fenceNode(sql: Sql): Promise<number> {
  await alterSystem(sql, { default_transaction_read_only: "on" });
  return await terminateClients(sql);
}

/** Ends every client session on the node except this one; returns how many. */
export async function terminateClients(sql: Sql): Promise<number> {
  const rows = await sql`
    SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`;
  return rows.filter((r) => r.ended).length;
}

/** Lifts a fence set by {@linkcode fenceNode}. */
export async function unfenceNode(sql: Sql): Promise<void> {
  await alterSystem(sql, { default_transaction_read_only: null });
}

/** Creates a physical replication slot unless it exists; true when created. */
export async function ensureSlot(sql: Sql, slot: string): Promise<boolean> {
  const rows = await sql`
    SELECT pg_create_physical_replication_slot(${slot})
     WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = ${slot})`;
  return rows.length > 0;
}

/** Runs CHECKPOINT (before pg_rewind, or it may wrongly see no divergence). */
export async function checkpoint(sql: Sql): Promise<void> {
  await sql`CHECKPOINT`;
}

// ---------------------------------------------------------------------------------------
// replication_status, failover_history, replication_canary
// ---------------------------------------------------------------------------------------

/** One row of replication_status. */
export interface ReplicationStatusRow {
  /** Node name. */
  nodeName: string;
  /** primary, replica or unknown. */
  nodeRole: "primary" | "replica" | "unknown";
  /** host:port. */
  nodeAddress: string;
  /** streaming, primary, unreachable, … */
  nodeState: string;
  /** Healthy. */
  isHealthy: boolean;
  /** Lag in bytes. */
  lagBytes: number | null;
  /** Lag in seconds. */
  lagSeconds: number | null;
  /** LSNs. */
  sentLsn: string | null;
  /** LSNs. */
  writeLsn: string | null;
  /** LSNs. */
  flushLsn: string | null;
  /** LSNs. */
  replayLsn: string | null;
  /** sync, quorum, async … */
  syncState: string | null;
  /** Timeline. */
  timeline: number | null;
  /** Epoch of the primary at the time. */
  epoch: number | null;
  /** When it was checked. */
  checkedAt: Date;
  /** Anything else (the monitor's sentence, alert). */
  metadata: Record<string, unknown>;
}

/** Upserts the current status of every node (one row per node). */
export async function upsertReplicationStatus(
  sql: Sql,
  rows: ReplicationStatusRow[],
): Promise<void> {
  if (!rows.length) return;
  await sql.begin(async (tx) => {
    for (const r of rows) {
      await tx`
        INSERT INTO replication_status
          (node_name, node_role, node_address, node_state, is_healthy, replication_lag,
           lag_seconds, sent_lsn, write_lsn, flush_lsn, replay_lsn, sync_state, timeline,
           epoch, last_checked_at, metadata)
        VALUES (${r.nodeName}, ${r.nodeRole}, ${r.nodeAddress}, ${r.nodeState}, ${r.isHealthy},
                ${r.lagBytes}, ${r.lagSeconds}, ${r.sentLsn}::pg_lsn, ${r.writeLsn}::pg_lsn,
                ${r.flushLsn}::pg_lsn, ${r.replayLsn}::pg_lsn, ${r.syncState}, ${r.timeline},
                ${r.epoch}, ${r.checkedAt}, ${tx.json(r.metadata as never)})
        ON CONFLICT (node_name) DO UPDATE SET
          node_role = EXCLUDED.node_role, node_address = EXCLUDED.node_address,
          node_state = EXCLUDED.node_state, is_healthy = EXCLUDED.is_healthy,
          replication_lag = EXCLUDED.replication_lag, lag_seconds = EXCLUDED.lag_seconds,
          sent_lsn = EXCLUDED.sent_lsn, write_lsn = EXCLUDED.write_lsn,
          flush_lsn = EXCLUDED.flush_lsn, replay_lsn = EXCLUDED.replay_lsn,
          sync_state = EXCLUDED.sync_state, timeline = EXCLUDED.timeline,
          epoch = EXCLUDED.epoch, last_checked_at = EXCLUDED.last_checked_at,
          metadata = EXCLUDED.metadata`;
    }
  });
}

/** Every node's stored status, by name. */
export async function listReplicationStatus(sql: Sql): Promise<ReplicationStatusRow[]> {
  const rows = await sql`
    SELECT node_name, node_role, node_address, node_state, is_healthy, replication_lag,
           lag_seconds, sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text,
           sync_state, timeline, epoch, last_checked_at, metadata
      FROM replication_status ORDER BY node_name`;
  return rows.map((r) => ({
    nodeName: r.node_name,
    nodeRole: r.node_role,
    nodeAddress: r.node_address,
    nodeState: r.node_state,
    isHealthy: r.is_healthy,
    lagBytes: r.replication_lag === null ? null : Number(r.replication_lag),
    lagSeconds: r.lag_seconds,
    sentLsn: r.sent_lsn,
    writeLsn: r.write_lsn,
    flushLsn: r.flush_lsn,
    replayLsn: r.replay_lsn,
    syncState: r.sync_state,
    timeline: r.timeline,
    epoch: r.epoch === null ? null : Number(r.epoch),
    checkedAt: r.last_checked_at,
    metadata: r.metadata,
  }));
}

/** One failover_history record. */
export interface FailoverRecord {
  /** bootstrap, failover, switchover, rejoin, fence. */
  kind: "bootstrap" | "failover" | "switchover" | "rejoin" | "fence";
  /** Previous primary (or the node a rejoin / fence is about). */
  oldPrimary: string;
  /** New primary. */
  newPrimary: string;
  /** The decision's sentence. */
  reason: string;
  /** Instance (or caller) that decided. */
  initiatedBy: string;
  /** When it started. */
  startedAt: Date;
  /** When it finished (null while in progress). */
  completedAt: Date | null;
  /** in_progress, completed, failed, fenced. */
  status: "in_progress" | "completed" | "failed" | "fenced";
  /** The error, when it failed. */
  errorMessage: string | null;
  /** Epoch published. */
  epoch: number | null;
  /** Fencing token of the failover lease. */
  fencingToken: number | null;
  /** Anything else (votes, LSNs, timings). */
  details: Record<string, unknown>;
}

/** Appends a failover_history record; returns its id. */
export async function insertFailoverRecord(sql: Sql, r: FailoverRecord): Promise<number> {
  const [row] = await sql`
    INSERT INTO failover_history
      (kind, old_primary, new_primary, reason, initiated_by, started_at, completed_at, status,
       error_message, epoch, fencing_token, details)
    VALUES (${r.kind}, ${r.oldPrimary}, ${r.newPrimary}, ${r.reason}, ${r.initiatedBy},
            ${r.startedAt}, ${r.completedAt}, ${r.status}, ${r.errorMessage}, ${r.epoch},
            ${r.fencingToken}, ${sql.json(r.details as never)})
    RETURNING id`;
  return Number(row.id);
}

/** The newest failover_history records, newest first. */
export async function listFailoverRecords(
  sql: Sql,
  options: { limit?: number } = {},
): Promise<(FailoverRecord & { id: number })[]> {
  const rows = await sql`
    SELECT id, kind, old_primary, new_primary, reason, initiated_by, started_at, completed_at,
           status, error_message, epoch, fencing_token, details
      FROM failover_history ORDER BY id DESC LIMIT ${options.limit ?? 20}`;
  return rows.map((r) => ({
    id: Number(r.id),
    kind: r.kind,
    oldPrimary: r.old_primary,
    newPrimary: r.new_primary,
    reason: r.reason,
    initiatedBy: r.initiated_by,
    startedAt: r.started_at,
    completedAt: r.completed_at,
    status: r.status,
    errorMessage: r.error_message,
    epoch: r.epoch === null ? null : Number(r.epoch),
    fencingToken: r.fencing_token === null ? null : Number(r.fencing_token),
    details: r.details,
  }));
}

/** The highest epoch ever recorded (0 when none): epochs survive a loss of Redis data. */
export async function maxRecordedEpoch(sql: Sql): Promise<number> {
  const [row] = await sql`SELECT coalesce(max(epoch), 0) AS epoch FROM failover_history`;
  return Number(row.epoch);
}

/**
 * What a node's failover_history says the primary is: the newest completed publication
 * (bootstrap, failover or switchover) with its epoch, and the highest epoch recorded at
 * all; null before the migrations created the table or when nothing was recorded.
 */
export async function recordedPrimary(
  sql: Sql,
): Promise<{ node: string; epoch: number; maxEpoch: number } | null> {
  const [table] = await sql`SELECT to_regclass('failover_history') IS NOT NULL AS present`;
  if (!table.present) return null;
  const [row] = await sql`
    SELECT new_primary, epoch, (SELECT max(epoch) FROM failover_history) AS max_epoch
      FROM failover_history
     WHERE epoch IS NOT NULL AND status = 'completed'
       AND kind IN ('bootstrap', 'failover', 'switchover')
     ORDER BY epoch DESC, id DESC LIMIT 1`;
  if (!row) return null;
  return {
    node: row.new_primary,
    epoch: Number(row.epoch),
    maxEpoch: Math.max(Number(row.epoch), Number(row.max_epoch ?? 0)),
  };
}

/** Writes a canary row; returns its id and the node (cluster_name) that accepted it. */
export async function writeCanary(
  sql: Sql,
  options: { instance: string; epoch: number | null; note?: string | null },
): Promise<{ id: number; node: string }> {
  const [row] = await sql`
    INSERT INTO replication_canary (instance, node_name, epoch, note)
    VALUES (${options.instance}, current_setting('cluster_name'), ${options.epoch},
            ${options.note ?? null})
    RETURNING id, node_name`;
  return { id: Number(row.id), node: row.node_name };
}

/** True when canary `id` is visible on this node. */
export async function canaryVisible(sql: Sql, id: number): Promise<boolean> {
  const [row] =
    await sql`SELECT EXISTS (SELECT 1 FROM replication_canary WHERE id = ${id}) AS seen`;
  return row.seen;
}

/** The canary ids among `ids` that this node has. */
export async function canaryIdsPresent(sql: Sql, ids: number[]): Promise<number[]> {
  if (!ids.length) return [];
  const rows = await sql`SELECT id FROM replication_canary WHERE id = ANY(${ids}::bigint[])`;
  return rows.map((r) => Number(r.id));
}

/** Whether the server answering on `sql` is in recovery (a standby); the liveness probe. */
export async function isInRecovery(sql: Sql): Promise<boolean> {
  const [row] = await sql<{ recovery: boolean }[]>`SELECT pg_is_in_recovery() AS recovery`;
  return row.recovery;
}
