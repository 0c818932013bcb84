/**
 * The alert rules every instance runs unless told otherwise: the three the planning document
 * names (failed logins above 10 a minute, database downtime, memory above 90 %, replication
 * lag above 5 s, a backup failure, disk space below 10 % free, connection pool exhaustion),
 * a verified backup older than its schedule allows, a spike of MFA lockouts and an actor the
 * supervisor gave up on.
 *
 * They are written in the `ALERT_RULES` format and parsed by the same schema (settings.ts).
 * A rule of `ALERT_RULES` with one of these names replaces it; `ALERT_DEFAULTS_DISABLED`
 * (names, comma-separated, or `all`) turns them off. The measurements they read are written
 * by the sources (sources.ts, activity_sources.ts); docs/monitoring.md lists them.
 * @module
 */

/** The default rules, in the `ALERT_RULES` JSON format. */
export const DEFAULT_ALERT_RULES = [
  {
    name: "failed_logins",
    measurement: "auth_logins",
    field: "failed",
    aggregate: "sum",
    window: "1m",
    op: ">",
    threshold: 10,
    severity: "warning",
    summary: "More than 10 failed login attempts in the last minute",
  },
  {
    name: "database_down",
    measurement: "database_up",
    field: "up",
    aggregate: "max",
    window: "30s",
    op: "<",
    threshold: 1,
    // No point at all means the collector is not writing: not a verdict on the database.
    noData: "keep",
    severity: "critical",
    summary: "No instance reached PostgreSQL in the last 30 s",
  },
  {
    name: "memory_high",
    measurement: "system_memory_usage",
    field: "percent",
    aggregate: "mean",
    window: "1m",
    groupBy: ["host"],
    op: ">",
    threshold: 90,
    for: "5m",
    severity: "critical",
    summary: "A host has used more than 90 % of its memory for 5 minutes",
  },
  {
    name: "replication_lag",
    measurement: "database_replication_lag",
    field: "seconds",
    aggregate: "max",
    window: "1m",
    groupBy: ["replica"],
    op: ">",
    threshold: 5,
    for: "30s",
    severity: "critical",
    summary: "A replica replays more than 5 s behind the primary",
  },
  {
    name: "disk_space_low",
    measurement: "system_disk_usage",
    field: "percent",
    aggregate: "max",
    window: "1m",
    groupBy: ["host", "mount"],
    op: ">",
    threshold: 90,
    for: "5m",
    severity: "warning",
    summary: "A file system has less than 10 % free for 5 minutes",
  },
  {
    name: "connection_pool_exhausted",
    measurement: "database_connections",
    field: "percent",
    aggregate: "max",
    window: "1m",
    groupBy: ["host"],
    op: ">",
    threshold: 90,
    for: "1m",
    severity: "critical",
    summary: "More than 90 % of PostgreSQL's max_connections in use for a minute",
  },
  {
    name: "backup_failed",
    measurement: "backup_status",
    field: "last_failed",
    aggregate: "last",
    window: "2m",
    groupBy: ["type"],
    op: ">",
    threshold: 0,
    noData: "keep",
    severity: "critical",
    summary: "The latest backup of a type failed",
  },
  {
    name: "backup_stale",
    measurement: "backup_status",
    field: "overdue",
    aggregate: "last",
    window: "2m",
    groupBy: ["type"],
    op: ">",
    threshold: 0,
    noData: "keep",
    severity: "critical",
    summary: "The newest verified backup of a type is older than its schedule allows",
  },
  {
    name: "mfa_lockouts_spike",
    measurement: "auth_logins",
    field: "mfa_locked",
    aggregate: "sum",
    window: "5m",
    op: ">",
    threshold: 5,
    severity: "warning",
    summary: "More than 5 login attempts ended in an MFA lockout in 5 minutes",
  },
  {
    name: "actor_given_up",
    measurement: "runtime_actors",
    field: "given_up",
    aggregate: "last",
    window: "1m",
    groupBy: ["host"],
    op: ">",
    threshold: 0,
    severity: "critical",
    summary: "The supervisor gave up restarting an actor",
  },
] as const;

/** Names of the default rules. */
export const DEFAULT_ALERT_RULE_NAMES: readonly string[] = DEFAULT_ALERT_RULES.map((r) => r.name);
