/**
 * Readers for the concern endpoints the console shows when an instance serves them:
 * sessions statistics, backup history, replication roles and lag, Prometheus metrics and
 * dashboards. Each endpoint is owned by its concern, so these readers accept the shapes
 * such an endpoint plausibly has (a list, or an object holding one; camelCase or
 * snake_case) and take only what they recognise; anything else is left out, never guessed.
 * @module
 */

/** One figure of the sessions panel. */
export interface Figure {
  /** What is counted. */
  label: string;
  /** The count. */
  value: number;
}

/** One backup of the history. */
export interface BackupRow {
  /** Backup id. */
  id: string;
  /** full, physical, … */
  kind: string | null;
  /** running, completed, failed, verified, … */
  status: string | null;
  /** Start (ms), if known. */
  startedAt: number | null;
  /** End (ms), if known. */
  finishedAt: number | null;
  /** Size in bytes, if known. */
  sizeBytes: number | null;
  /** Whether a test restore verified it, if known. */
  verified: boolean | null;
  /** Why it failed, if it did. */
  error: string | null;
  /** While it runs: phase, bytes done / expected, rate (bytes/s), seconds left. */
  progress?: BackupRowProgress | null;
}

/** The progress of a running backup (GET /backups' `progress`). */
export interface BackupRowProgress {
  /** What it is doing. */
  phase: string;
  /** Bytes done. */
  done: number;
  /** Bytes expected (null when unknown). */
  total: number | null;
  /** Bytes per second (null when unknown). */
  rate: number | null;
  /** Seconds left (null when unknown). */
  eta: number | null;
}

function backupProgress(value: unknown): BackupRowProgress | null {
  if (!isObject(value)) return null;
  const phase = str(pick(value, ["phase", "step"]));
  const done = num(pick(value, ["bytesDone", "bytes_done", "done"]));
  if (phase === null || done === null) return null;
  return {
    phase,
    done,
    total: num(pick(value, ["bytesTotal", "bytes_total", "total"])),
    rate: num(pick(value, ["bytesPerSecond", "bytes_per_second", "rate"])),
    eta: num(pick(value, ["etaSeconds", "eta_seconds", "eta"])),
  };
}

/** One database node as the replication endpoint reports it. */
export interface ReplicationNode {
  /** Node name (host, application name or id). */
  name: string;
  /** primary, replica, … */
  role: string | null;
  /** streaming, healthy, down, … */
  state: string | null;
  /** Replay lag in bytes, if known. */
  lagBytes: number | null;
  /** Replay lag in seconds, if known. */
  lagSeconds: number | null;
}

/** One Prometheus sample. */
export interface Sample {
  /** Metric name. */
  name: string;
  /** Label set as written (`{a="b"}`), or "" when unlabelled. */
  labels: string;
  /** Value. */
  value: number;
}

/** A time series with points in time order. */
export interface Series {
  /** What it measures. */
  name: string;
  /** Unit of the values, when the source says. */
  unit?: string;
  /** Points (ms, value). */
  points: [number, number][];
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The first of `keys` present in `obj` (dots descend: `lag.bytes`). */
function pick(obj: Json, keys: string[]): unknown {
  for (const key of keys) {
    let at: unknown = obj;
    for (const part of key.split(".")) at = isObject(at) ? at[part] : undefined;
    if (at !== undefined && at !== null) return at;
  }
  return undefined;
}

function num(value: unknown): number | null {
  if (typeof value === "number" && Number.isFinite(value)) return value;
  if (typeof value === "string" && value.trim() !== "" && Number.isFinite(Number(value))) {
    return Number(value);
  }
  return null;
}

function str(value: unknown): string | null {
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return null;
}

/** Epoch ms from a number (ms, or s when small) or a date string. */
function time(value: unknown): number | null {
  if (typeof value === "number" && Number.isFinite(value)) {
    return value < 1e11 ? value * 1000 : value;
  }
  if (typeof value === "string") {
    const ms = Date.parse(value);
    return Number.isNaN(ms) ? null : ms;
  }
  return null;
}

/** The list in a body: the body itself, or the first array under one of `keys`. */
function listIn(body: unknown, keys: string[]): unknown[] | null {
  if (Array.isArray(body)) return body;
  if (!isObject(body)) return null;
  for (const key of keys) if (Array.isArray(body[key])) return body[key] as unknown[];
  return null;
}

function words(key: string): string {
  return key.replace(/_/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase();
}

/**
 * Numeric figures of a sessions statistics body: top-level numbers, and numbers one level
 * down (`{ sessions: { active: 3 } }` → "sessions active"). At most `max`.
 */
export function sessionFigures(body: unknown, max = 6): Figure[] {
  const out: Figure[] = [];
  if (!isObject(body)) return out;
  for (const [key, value] of Object.entries(body)) {
    const n = num(value);
    if (typeof value === "number" && n !== null) out.push({ label: words(key), value: n });
    else if (isObject(value)) {
      for (const [inner, v] of Object.entries(value)) {
        if (typeof v === "number" && Number.isFinite(v)) {
          out.push({ label: `${words(key)} ${words(inner)}`, value: v });
        }
      }
    }
  }
  return out.slice(0, max);
}

/** Backup rows of a `GET /backups` body, newest first, at most `max`. */
export function backupRows(body: unknown, max = 10): BackupRow[] {
  const list = listIn(body, ["backups", "items", "history", "data"]) ?? [];
  const rows: BackupRow[] = [];
  for (const item of list) {
    if (!isObject(item)) continue;
    // A name (`full-20250101T0200`) says more than a serial id.
    const id = str(pick(item, ["name", "label", "id", "backupId", "backup_id"]));
    if (id === null) continue;
    const verified = pick(item, ["verified", "verification.ok", "verifiedAt", "verified_at"]);
    rows.push({
      id,
      kind: str(pick(item, ["kind", "type", "method", "mode"])),
      status: str(pick(item, ["status", "state", "result", "outcome"])),
      startedAt: time(pick(item, ["startedAt", "started_at", "createdAt", "created_at", "start"])),
      finishedAt: time(
        pick(item, ["finishedAt", "finished_at", "completedAt", "completed_at", "end"]),
      ),
      sizeBytes: num(
        pick(item, [
          "compressedSize",
          "compressed_size",
          "sizeBytes",
          "size_bytes",
          "backupSize",
          "backup_size",
          "bytes",
          "size",
        ]),
      ),
      error: str(pick(item, ["errorMessage", "error_message", "error"])),
      verified: verified === undefined ? null : typeof verified === "boolean" ? verified : true,
      progress: backupProgress(pick(item, ["progress"])),
    });
  }
  rows.sort((a, b) => (b.startedAt ?? 0) - (a.startedAt ?? 0));
  return rows.slice(0, max);
}

function replicationNode(item: Json, role?: string): ReplicationNode | null {
  const name = str(
    pick(item, ["name", "node", "id", "host", "applicationName", "application_name", "url"]),
  );
  if (name === null) return null;
  const lagMs = num(pick(item, ["lagMs", "lag_ms", "replayLagMs", "lag.ms"]));
  const state = str(pick(item, ["state", "status", "health"]));
  // What the failover coordinator holds for the node beyond what the sample saw.
  const held = item.awaitingOperator === true
    ? "waiting for its operator (another host's)"
    : item.parked === true
    ? "parked: to be started here as a replica"
    : null;
  return {
    name,
    role: str(pick(item, ["role", "kind"])) ?? role ?? null,
    state: held ? [state, held].filter(Boolean).join(" · ") : state,
    lagBytes: num(
      pick(item, ["lagBytes", "lag_bytes", "replayLagBytes", "replay_lag_bytes", "lag.bytes"]),
    ),
    lagSeconds: num(
      pick(item, [
        "lagSeconds",
        "lag_seconds",
        "lagS",
        "replayLagSeconds",
        "replay_lag_seconds",
        "lag.seconds",
      ]),
    ) ?? (lagMs === null ? null : lagMs / 1000),
  };
}

/** Nodes of a `GET /replication` body: a list, `{ nodes }`, or `{ primary, replicas }`. */
export function replicationNodes(body: unknown): ReplicationNode[] {
  const out: ReplicationNode[] = [];
  const list = listIn(body, ["nodes", "members", "servers"]);
  if (list) {
    for (const item of list) {
      const node = isObject(item) ? replicationNode(item) : null;
      if (node) out.push(node);
    }
    return out;
  }
  if (!isObject(body)) return out;
  if (isObject(body.primary)) {
    const node = replicationNode(body.primary, "primary");
    if (node) out.push(node);
  }
  for (const item of Array.isArray(body.replicas) ? body.replicas : []) {
    const node = isObject(item) ? replicationNode(item, "replica") : null;
    if (node) out.push(node);
  }
  return out;
}

/** Samples and metric types of a Prometheus text exposition. */
export function parsePrometheus(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    if (line.startsWith("#")) {
      const m = /^#\s*TYPE\s+(\S+)\s+(\S+)/.exec(line);
      if (m) types.set(m[1], m[2]);
      continue;
    }
    const m = /^([A-Za-z_:][\w:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const value = m[3] === "+Inf" ? Infinity : m[3] === "-Inf" ? -Infinity : Number(m[3]);
    if (Number.isNaN(value)) continue;
    samples.push({ name: m[1], labels: m[2] ?? "", value });
  }
  return { samples, types };
}

/** Names that make a metric "key" for an operator, most telling first. */
const KEY_WORDS = [
  "cpu_usage",
  "memory_used_bytes",
  "stream_viewers",
  "sessions",
  "replication_lag_seconds",
  "cache_hit",
  "connections_used",
  "points_written",
  "query",
  "lag",
  "backup",
  "memory",
  "cpu",
  "http_request",
  "message",
];

/**
 * The samples worth a sparkline: no histogram or summary parts and no timestamps; a
 * metric with several label sets becomes one sample (the mean of ratios, else the sum,
 * said in `labels`); names with operator words first; at most `max`.
 */
export function keySamples(
  samples: Sample[],
  types: Map<string, string>,
  max = 6,
): Sample[] {
  const base = (name: string) => name.replace(/_(bucket|sum|count|created|info)$/, "");
  const byName = new Map<string, Sample[]>();
  for (const s of samples) {
    if (!Number.isFinite(s.value)) continue;
    if (/_(bucket|created|info)$|_timestamp_seconds$/.test(s.name)) continue;
    if (s.labels.includes('quantile="')) continue;
    const type = types.get(base(s.name));
    if ((type === "histogram" || type === "summary") && s.name !== base(s.name)) continue;
    byName.set(s.name, [...(byName.get(s.name) ?? []), s]);
  }
  const merged: Sample[] = [...byName.entries()].map(([name, list]) => {
    if (list.length === 1) return list[0];
    const total = list.reduce((sum, s) => sum + s.value, 0);
    return name.endsWith("_ratio")
      ? { name, labels: `(mean of ${list.length})`, value: total / list.length }
      : { name, labels: `(sum of ${list.length})`, value: total };
  });
  const rank = (s: Sample) => {
    const word = KEY_WORDS.findIndex((w) => s.name.includes(w));
    return word < 0 ? KEY_WORDS.length : word;
  };
  return merged
    .map((s, i) => ({ s, i, r: rank(s) }))
    .sort((a, b) => a.r - b.r || a.i - b.i)
    .slice(0, max)
    .map((x) => x.s);
}

function pointOf(item: unknown): [number, number] | null {
  if (Array.isArray(item) && item.length >= 2) {
    const t = time(item[0]);
    const v = num(item[1]);
    return t !== null && v !== null ? [t, v] : null;
  }
  if (!isObject(item)) return null;
  const t = time(pick(item, ["t", "time", "ts", "at", "timestamp", "_time", "bucket", "start"]));
  const v = num(pick(item, ["v", "value", "_value", "y", "count", "avg", "mean"]));
  return t !== null && v !== null ? [t, v] : null;
}

/**
 * Time series in a dashboard body: every array of at least two (time, value) points, as
 * `[t, v]` pairs or `{ time, value }` objects, named by a sibling `name`/`label`/`metric`
 * or by where it sits. At most `max`.
 */
export function dashboardSeries(body: unknown, max = 8): Series[] {
  const out: Series[] = [];
  // The runtime's own dashboards: { panels: [{ title, unit, series: [{ label, tags, points }] }] }.
  if (isObject(body) && Array.isArray(body.panels)) {
    for (const panel of body.panels) {
      if (!isObject(panel) || !Array.isArray(panel.series)) continue;
      const title = str(panel.title) ?? str(panel.id) ?? "panel";
      for (const series of panel.series) {
        if (out.length >= max || !isObject(series) || !Array.isArray(series.points)) continue;
        const points = series.points.map(pointOf).filter((p): p is [number, number] => !!p);
        const tags = isObject(series.tags)
          ? Object.entries(series.tags).map(([k, v]) => `${k}=${String(v)}`).join(", ")
          : "";
        const label = str(series.label);
        out.push({
          name: `${title}${label && label !== title ? `: ${label}` : ""}${
            tags ? ` (${tags})` : ""
          }`,
          unit: str(panel.unit) ?? undefined,
          points: points.sort((a, b) => a[0] - b[0]),
        });
      }
    }
    return out;
  }
  const visit = (value: unknown, where: string, depth: number) => {
    if (out.length >= max || depth > 5) return;
    if (Array.isArray(value)) {
      const points = value.map(pointOf);
      if (value.length >= 2 && points.every((p) => p !== null)) {
        out.push({
          name: where || "series",
          points: (points as [number, number][]).sort((a, b) => a[0] - b[0]),
        });
        return;
      }
      value.forEach((item, i) => {
        const named = isObject(item) ? str(pick(item, ["name", "label", "metric", "title"])) : null;
        visit(item, named ?? (where ? `${where}[${i}]` : `#${i}`), depth + 1);
      });
      return;
    }
    if (!isObject(value)) return;
    const own = str(pick(value, ["name", "label", "metric", "title"]));
    for (const [key, inner] of Object.entries(value)) {
      if (!Array.isArray(inner) && !isObject(inner)) continue;
      const label = ["points", "values", "data", "series", "rows", "buckets"].includes(key)
        ? own ?? where
        : where
        ? `${where} ${key}`
        : key;
      visit(inner, label, depth + 1);
    }
  };
  visit(body, "", 0);
  return out;
}

/** Panel errors of a dashboard answer (`{ panels: [{ title, error }] }`), as sentences. */
export function dashboardErrors(body: unknown): string[] {
  if (!isObject(body) || !Array.isArray(body.panels)) return [];
  return body.panels.flatMap((p) =>
    isObject(p) && typeof p.error === "string" ? [`${str(p.title) ?? "panel"}: ${p.error}`] : []
  );
}
