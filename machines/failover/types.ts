/**
 * The data the failover chart holds and exchanges with its effects: published primaries,
 * node samples, the inputs and outputs of every invoked effect, events, input and context.
 * Everything here is plain data (no functions, no class instances), so a snapshot of the
 * chart serialises and restores.
 * @module
 */

/** The primary as published in Redis: node, epoch, and a read-only fallback when degraded. */
export interface Published {
  /** Node name of the primary. */
  node: string;
  /** Epoch: grows with every promotion; instances never go back to an older one. */
  epoch: number;
  /** Degraded: a replica that serves reads while no primary takes writes, else null. */
  readOnlyNode: string | null;
}

/** Where this instance's pool points. */
export interface PoolTarget {
  /** Node name. */
  node: string;
  /** Epoch of the published primary the pool follows. */
  epoch: number;
  /** True when the pool points at a read-only replica (degraded). */
  readOnly: boolean;
}

/** synchronous_standby_names as configured on a primary. */
export interface SyncConfig {
  /** ANY (quorum) or FIRST (priority). */
  method: "ANY" | "FIRST";
  /** How many standbys must confirm. */
  num: number;
  /** Standby names (application_name = node name). */
  names: string[];
}

/** One node as one sampling saw it. */
export interface NodeSample {
  /** Node name (its cluster_name / application_name). */
  name: string;
  /** host:port. */
  address: string;
  /** Whether it answered. */
  reachable: boolean;
  /** primary, replica, or unknown when unreachable. */
  role: "primary" | "replica" | "unknown";
  /** primary, fenced, streaming, catchup, startup, stopped, unreachable, rogue … */
  state: string;
  /** False when unreachable, diverged, fenced or alerting. */
  healthy: boolean;
  /** pg_is_in_recovery(), or null when unreachable. */
  inRecovery: boolean | null;
  /** default_transaction_read_only is on (fenced by us). */
  readOnlyFenced: boolean;
  /** pg_current_wal_lsn() of a primary. */
  currentLsn: string | null;
  /** Replica: last WAL received and flushed. */
  receiveLsn: string | null;
  /** Replica: last WAL replayed. */
  replayLsn: string | null;
  /** From the primary's pg_stat_replication for this node. */
  sentLsn: string | null;
  /** From the primary's pg_stat_replication for this node. */
  writeLsn: string | null;
  /** From the primary's pg_stat_replication for this node. */
  flushLsn: string | null;
  /** Bytes the node's replay is behind the primary's current WAL position. */
  lagBytes: number | null;
  /** Replay lag in seconds (pg_stat_replication.replay_lag; 0 when caught up). */
  lagSeconds: number | null;
  /** sync, quorum, potential or async (from the primary's view). */
  syncState: string | null;
  /** Timeline the node is on (or receives). */
  timeline: number | null;
  /** Node (or address) it streams from. */
  upstream: string | null;
  /** Listed as streaming (or catching up) in the primary's pg_stat_replication. */
  streaming: boolean;
  /** The error when unreachable. */
  error: string | null;
  /** One sentence about the node. */
  why: string;
}

/** One sampling of every node. */
export interface ReplicationSample {
  /** Injected-clock time of the sample. */
  at: number;
  /** The primary the sample was taken against. */
  primary: string;
  /** Every node, in configuration order. */
  nodes: NodeSample[];
  /** synchronous_standby_names of the primary (null when unreachable or unset). */
  sync: SyncConfig | null;
}

/** A repair the coordinator should make. */
export type Finding =
  | { kind: "rejoin"; node: string; why: string }
  | { kind: "unfence"; node: string; why: string }
  | { kind: "start_standby"; node: string; why: string }
  | { kind: "repoint_replica"; node: string; why: string }
  | { kind: "sync"; node: string; standbys: string[]; why: string };

/**
 * Output of the `repair` effect: made, or a rejoin / start of a parked node that failed (an
 * outcome, not an error: the chart must know what the attempt left behind).
 */
export type RepairOutput =
  | { ok: true; why: string }
  | {
    ok: false;
    /** What went wrong (the failover_history row has it too). */
    error: string;
    /**
     * The node is left stopped by this host (the rejoin stopped it before a later step
     * failed, or a parked node did not start): it is parked, started as a replica later.
     * False when this host never stopped it (a node FAILOVER_LOCAL_NODES puts on another
     * host is only fenced over SQL): starting it is not ours to do.
     */
    leftStopped: boolean;
    /**
     * This host may not or cannot act on the node beyond the fence (FAILOVER_LOCAL_NODES
     * puts it on another host, or its data directory is not here): a rejoin left it fenced
     * read-only over SQL, for its operator to rewind by hand. The chart then waits for the
     * operator ({@linkcode FailoverContext.awaitingOperator}) instead of fencing it again
     * every backoff.
     */
    notOurs: boolean;
  };

/** Output of the `probePrimary` effect. */
export interface ProbeOutput {
  /** The primary answered and is out of recovery. */
  ok: boolean;
  /** Why it failed, as a sentence fragment ("connection refused"). */
  error: string | null;
  /** Round trip in ms. */
  latencyMs: number;
  /**
   * The primary's address refused the connection (ECONNREFUSED: its host answered, nothing
   * listens on the port). Unlike a timeout this is not ambiguous about one thing: no
   * PostgreSQL accepts connections there now.
   */
  refused: boolean;
  /** Injected-clock time of the probe. */
  at: number;
  /** Newest primary published in Redis (null: none, or Redis unreachable). */
  published: Published | null;
  /** Redis answered the read: a null `published` is then no record at all. */
  redisAnswered?: boolean;
}

/** What one observer (a runtime instance) saw when it looked at the primary. */
export interface Observation {
  /** The instance. */
  instance: string;
  /** Its fresh probe was refused (ECONNREFUSED). */
  refused: boolean;
  /** What it saw, as a sentence fragment. */
  why: string;
}

/** What a replica's WAL receiver says about the primary (pg_stat_wal_receiver). */
export interface ReceiverState {
  /** The replica. */
  node: string;
  /**
   * Its WAL receiver streams from the primary now (or from a sender that is no other known
   * node: taken as the primary); null when the replica says nothing about the primary: it did
   * not answer, is out of recovery, or streams from another node (cascading).
   */
  streaming: boolean | null;
  /** What was seen, as a sentence fragment. */
  why: string;
}

/**
 * Output of the `corroborate` effect: the evidence the coordinator gathers when its probe of
 * the primary was refused, before it may take the fast path.
 */
export interface Evidence {
  /** Every live instance's fresh look at the primary (this one included). */
  observers: Observation[];
  /** Every other node's WAL receiver. */
  receivers: ReceiverState[];
}

/** Output of the `collectVotes` effect. */
export interface VoteOutput {
  /** Instances (this one included) that see the primary down. */
  agree: number;
  /** Live instances (this one included). */
  live: number;
  /** Each answer. */
  votes: { instance: string; agree: boolean; why: string }[];
}

/** Output of the `promote` and `switchover` effects. */
export interface PromotionOutput {
  /** The node that is now writable. */
  node: string;
  /** Its LSN at promotion. */
  lsn: string | null;
  /** True when it was already promoted (by a coordinator that died) and is adopted. */
  adopted: boolean;
  /** Why this node. */
  why: string;
  /** A node this effect stopped (switchover), to restart as a standby. */
  parked: string | null;
}

/** Output of the `promote` effect when no replica may be promoted (an outcome, not an error). */
export interface NoPromotion {
  /** No node: nothing was promoted. */
  node: null;
  /** Why no replica qualifies ({@linkcode chooseCandidate}'s sentence). */
  choice: CandidateChoice;
  /** A replica that can serve reads meanwhile ({@linkcode readOnlyFallback}), or null. */
  readOnlyNode: string | null;
}

/** Output of the `reassess` effect: the degraded coordinator's look at the cluster. */
export interface Assessment {
  /** The primary answers again. */
  primaryOk: boolean;
  /** The replica that may be promoted now, or why none. */
  choice: CandidateChoice;
  /** A replica that can serve reads meanwhile, or null. */
  readOnlyNode: string | null;
}

/** Input of the `publish` effect. */
export interface PublishInput {
  /** What is published. */
  kind: "bootstrap" | "failover" | "switchover" | "degraded" | "recovered";
  /** New primary. */
  node: string;
  /** Previous primary. */
  oldPrimary: string;
  /** Proposed epoch (the effect may raise it past anything already published). */
  epoch: number;
  /** Read-only fallback (degraded) or null. */
  readOnlyNode: string | null;
  /** Fencing token of the failover lease. */
  token: number | null;
  /** Injected-clock time the failure was first seen (or the switchover asked). */
  startedAt: number | null;
  /** The decision's sentence. */
  why: string;
  /** Switchover request id, when an operator asked. */
  requestId: string | null;
}

/** Output of the `publish` effect. */
export interface PublishOutput {
  /** Published primary. */
  published: Published;
  /** Sentence for the record. */
  why: string;
}

/**
 * Input of the `reassert` effect: the coordinator writes the primary it follows back to
 * Redis, unchanged (same node, same epoch), under its fencing token, because Redis holds
 * an older epoch or no record (Redis lost it, e.g. an asynchronous-replication failover).
 */
export interface ReassertInput {
  /** The primary followed now, with the epoch already recorded. */
  primary: Published;
  /** The failover lease's fencing token. */
  token: number;
}

/** A switchover an operator asked for. */
export interface SwitchoverRequest {
  /** Request id (the API waits for the decision with this id). */
  id: string;
  /** Target node, or null for the best replica. */
  target: string | null;
  /** Who asked. */
  requestedBy: string;
}

/** The last decision taken for someone who waits on it (switchover API). */
export interface Decision {
  /** Request id or null. */
  id: string | null;
  /** failover, switchover, degraded, rejoin … */
  kind: string;
  /** Whether it succeeded. */
  ok: boolean;
  /** The sentence. */
  why: string;
  /** Published primary after it. */
  primary: Published | null;
}

/** An active lag / health alert. */
export interface LagAlert {
  /** Node name. */
  node: string;
  /** lag or unreachable. */
  kind: "lag" | "unreachable";
  /** Injected-clock time it was raised. */
  since: number;
  /** Sentence. */
  why: string;
}

/** What {@linkcode chooseCandidate} decided. */
export interface CandidateChoice {
  /** The node to promote (or adopt), or null when none is eligible. */
  node: string | null;
  /** True when the node is already out of recovery (adopt, don't promote). */
  adopt: boolean;
  /** One sentence: why this node, or why none. */
  why: string;
}

/** Output of the `readStart` effect: what an instance sees when its failover actor starts. */
export interface StartFacts {
  /** The primary published in Redis (null: none, or Redis did not answer in time). */
  published: Published | null;
  /** Where the runtime's pool points now (null: at none of the configured nodes). */
  pool: PoolTarget | null;
}

/**
 * One observation of the primary, as the detector weighs it: a probe's output, or a probe
 * that failed (`at` null) or gave no answer in time.
 */
export interface ProbeResult {
  /** The primary answered and is out of recovery. */
  ok: boolean;
  /** Why it failed, as a sentence fragment ("connection refused"). */
  error: string | null;
  /** Round trip in ms (-1 when the probe itself failed). */
  latencyMs: number;
  /** The connection was refused (see {@linkcode ProbeOutput.refused}); false when unknown. */
  refused: boolean;
  /** Injected-clock time of the probe, or null when not known (the probe failed or hung). */
  at: number | null;
  /** Newest primary published in Redis (null: none, unknown, or Redis unreachable). */
  published: Published | null;
  /**
   * Redis answered the read (so a null `published` means no record at all, not an
   * unreachable Redis); absent or false when unknown.
   */
  redisAnswered?: boolean;
}

/** Events of the failover machine. */
export type FailoverEvent =
  | { type: "LEASE_ACQUIRED"; token: number }
  | { type: "LEASE_LOST"; why: string }
  | { type: "failover.primary"; node: string; epoch: number; readOnlyNode?: string | null }
  | { type: "SWITCHOVER"; id: string; target: string | null; requestedBy: string }
  /** A query through this instance's pool failed with a connection error (a hint, not evidence). */
  | { type: "POOL_ERROR"; why: string };

/**
 * Input of the failover machine: who this instance is, the nodes and the timings. Where to
 * start (which primary, where the pool points) is not input: the chart finds it out in its
 * `starting` state.
 */
export interface FailoverInput {
  /** This instance's id. */
  instanceId: string;
  /** Node names in priority order (earlier = preferred at equal LSN). */
  nodes: string[];
  /** Pause between probes of the primary. */
  probeIntervalMs?: number;
  /** A probe without an answer within this is a failed probe. */
  probeTimeoutMs?: number;
  /** Consecutive failed probes before the coordinator asks for votes. */
  confirmations?: number;
  /** Pause between samplings of every node. */
  monitorIntervalMs?: number;
  /** Upper bound of a vote round. */
  confirmTimeoutMs?: number;
  /** Lag above which an alert is raised (bytes). */
  lagAlertBytes?: number;
  /** Lag above which an alert is raised (seconds). */
  lagAlertSeconds?: number;
  /** Synchronous replication wanted (synchronous_standby_names kept to streaming replicas). */
  syncMode?: boolean;
  /** Certain evidence (see {@linkcode Evidence}) may skip the count of failed probes. */
  fastPath?: boolean;
  /** Async mode: a replica further behind than this at the last sample is not eligible. */
  maxLagBytes?: number;
  /** After a failed repair of a node, wait this long before trying it again. */
  maintenanceBackoffMs?: number;
  /** Pause before retrying a pool switch that failed. */
  poolRetryMs?: number;
}

/** Context of the failover machine: data only, so every snapshot serialises. */
export interface FailoverContext {
  /** This instance's id. */
  instanceId: string;
  /** Node names in priority order. */
  nodes: string[];
  /** The primary this instance follows (decided in `starting`, then by the detector). */
  primary: Published;
  /** Where the pool points (what the last `repointPool` or the start found). */
  pool: PoolTarget;
  /** Fencing token while this instance holds the failover lease. */
  leader: number | null;
  /** Pause between probes of the primary. */
  probeIntervalMs: number;
  /** A probe without an answer within this is a failed probe. */
  probeTimeoutMs: number;
  /** Consecutive failed probes before the coordinator asks for votes. */
  confirmations: number;
  /** Pause between samplings of every node. */
  monitorIntervalMs: number;
  /** Upper bound of a vote round. */
  confirmTimeoutMs: number;
  /** Lag above which an alert is raised (bytes). */
  lagAlertBytes: number;
  /** Lag above which an alert is raised (seconds). */
  lagAlertSeconds: number;
  /** Synchronous replication wanted. */
  syncMode: boolean;
  /** Certain evidence may skip the count of failed probes (the vote stays). */
  fastPath: boolean;
  /** Async eligibility limit. */
  maxLagBytes: number;
  /** After a failed repair of a node, wait this long before trying it again. */
  maintenanceBackoffMs: number;
  /** Pause before retrying a pool switch that failed. */
  poolRetryMs: number;
  /** Consecutive failed probes of the current primary. */
  failures: number;
  /** The last probe. */
  lastProbe: { ok: boolean; error: string | null; latencyMs: number; refused: boolean } | null;
  /**
   * A pool error seen since the last probe started (null: none): a hint that brings the next
   * probe forward (see {@linkcode FailoverEvent} `POOL_ERROR`), weighed by that probe only.
   */
  hint: { why: string } | null;
  /** Time (from sample clocks) the first failed probe of this streak was seen. */
  suspectSince: number | null;
  /**
   * The path of this suspicion round: `fast` once certain evidence was gathered, `careful`
   * while it rests on the count of failed probes.
   */
  path: "fast" | "careful";
  /** The evidence gathered on the last refused probe (null: none this round). */
  evidence: Evidence | null;
  /** The sentence that judged it (null: none this round). */
  evidenceWhy: string | null;
  /** The last vote round. */
  votes: VoteOutput | null;
  /** The last promotion. */
  promotion: PromotionOutput | null;
  /** The switchover being worked on. */
  switchover: SwitchoverRequest | null;
  /** The last sample of every node. */
  sample: ReplicationSample | null;
  /** The last sample taken while the primary answered (sync config, lags). */
  lastGoodSample: ReplicationSample | null;
  /** The repair being made. */
  finding: Finding | null;
  /** Per node: no repair before this sample time. */
  backoff: Record<string, number>;
  /** Per node: re-points that did not make it stream. */
  repoints: Record<string, number>;
  /**
   * Nodes this host stopped (a switchover, or a rejoin that failed after the stop), to be
   * started as standbys; never a node this host may not act on.
   */
  parked: string[];
  /**
   * Nodes a rejoin fenced read-only but could not bring back because this host may not act
   * on them ({@linkcode RepairOutput} `notOurs`): waiting for their operator. No rejoin of
   * such a node is proposed while samples show it writable and still fenced; it leaves the
   * list as soon as a sample shows anything else (the fence lifted, down, a replica).
   */
  awaitingOperator: string[];
  /** Active alerts by `node:kind`. */
  alerts: Record<string, LagAlert>;
  /** The last decision (switchover API waits on `decision.id`). */
  decision: Decision | null;
  /** Why the degraded state holds. */
  degradedWhy: string | null;
  /** The degraded record this coordinator last published in this degraded spell (or null). */
  announced: Published | null;
  /** One sentence saying why the machine is where it is. */
  why: string;
}
