/**
 * Server-side HTML of the review console: the whole page, and the fragments the page's
 * script re-fetches to stay current (one instance, the concern panels, the messages).
 *
 * Renderers take plain data and return HTML strings; every value goes through
 * `escapeHtml`, except chart SVG, which `console/svg.ts` has already rebuilt from an
 * allow-list. The page works without JavaScript: states, charts (highlighted by class),
 * timeline and panels are all in the HTML.
 * @module
 */
import { renderViewer } from "./login.ts";
import type { ActorView, TransitionRecord } from "../actors/runtime/inspector.ts";
import type { BackupRow, BackupRowProgress, Figure, ReplicationNode, Series } from "./concerns.ts";
import {
  escapeHtml as e,
  formatQuantity,
  formatState,
  formatValue,
  slug,
  timeTag,
} from "./html.ts";

/** Delivery metadata of the transport message that caused a transition. */
export interface Origin {
  /** Message id. */
  id: string;
  /** Sender address. */
  from: { instance: string; actor: string };
  /** send, broadcast or request. */
  kind: string;
  /** Sender's clock at send time (ms). */
  sentAt: number;
}

/** A transition as the console shows it: which instance it happened on, and its cause. */
export interface TransitionView extends TransitionRecord {
  /** Instance the transition happened on. */
  instance: string;
  /** Delivery metadata, when a transport message caused it. */
  origin?: Origin;
}

/** A live instance as /cluster lists it. */
export interface MemberModel {
  /** Instance id. */
  id: string;
  /** Advertised URL ("" when it serves no HTTP). */
  url: string;
  /** Cluster-singleton roles held, with fencing tokens. */
  roles: { role: string; token: number }[];
  /** Age of its last heartbeat (ms), null when unknown. */
  heartbeatAgeMs: number | null;
}

/** One actor drawn on the page. */
export interface ActorModel extends ActorView {
  /** Highlighted, sanitized chart SVG, or null. */
  chart: string | null;
  /** Why there is no chart, when there is none. */
  chartNote: string | null;
  /** The chart's natural width (CSS px), for laying the figures out. */
  chartWidth: number | null;
}

/** Everything shown for one instance. */
export interface InstanceModel {
  /** Membership facts. */
  member: MemberModel;
  /** True for the instance serving the page. */
  self: boolean;
  /** Why its actors could not be read, or null. */
  error: string | null;
  /** Root supervisor state and last decision, when known. */
  supervisor: { state: string; reason: string } | null;
  /** Transport counters, when known. */
  transport: Record<string, number> | null;
  /** Actors drawn as charts. */
  actors: ActorModel[];
  /** Actors only listed (ended nested actors, or beyond the drawing cap). */
  listed: ActorView[];
  /** Recent transitions, oldest first. */
  transitions: TransitionView[];
}

/** The outcome of reading an optional concern endpoint. */
export type Reading<T> =
  | { ok: true; source: string; data: T }
  | { ok: false; source: string; missing: boolean; declined?: boolean; reason: string };

/** A metric sampled over time (by the console while someone watches). */
export interface MetricSeries {
  /** Metric name. */
  name: string;
  /** Label set as written, or "". */
  labels: string;
  /** Unit for display. */
  unit: "bytes" | "seconds" | "ratio" | "";
  /** True when values are per-second rates of a counter. */
  rate: boolean;
  /** Values, oldest first. */
  values: number[];
}

/** Replication node with its lag history. */
export interface ReplicationRow extends ReplicationNode {
  /** Lag (seconds, or bytes when seconds are unknown), oldest first. */
  history: number[];
}

/** The concern panels. */
export interface PanelsModel {
  /** Sessions figures (and a note on where they come from). */
  sessions: Reading<{ figures: Figure[]; note: string | null }>;
  /** Backup history. */
  backups: Reading<BackupRow[]>;
  /** Replication roles and lag. */
  replication: Reading<ReplicationRow[]>;
  /** Key metrics per instance. */
  metrics: { instance: string; reading: Reading<MetricSeries[]> }[];
  /** Dashboards, when the instance serves them. */
  dashboards: Reading<{ name: string; title: string; series: Series[]; errors: string[] }[]>;
}

/** The whole page. */
export interface PageModel {
  /** Instance serving the page. */
  instance: string;
  /** Cluster mode (`redis` or `single-instance`). */
  mode: string;
  /** When the page was rendered (ms). */
  generatedAt: number;
  /** Why the member list could not be read, or null. */
  clusterError: string | null;
  /** Live instances. */
  instances: InstanceModel[];
  /** Concern panels. */
  panels: PanelsModel;
  /** The signed-in person viewing the page, if known. */
  viewer?: { name: string; role: string } | null;
}

/** Timeline rows shown. */
const TIMELINE_ROWS = 60;
/** Messages drawn. */
const MESSAGE_ROWS = 40;

function statusBadge(status: string): string {
  const known = ["active", "done", "error", "stopped"].includes(status) ? status : "other";
  return `<span class="badge status-${known}" data-status>${e(status)}</span>`;
}

function summaryList(summary: Record<string, unknown>): string {
  const entries = Object.entries(summary ?? {}).filter(([k]) => k !== "state").slice(0, 8);
  if (!entries.length) return `<dl class="summary" data-summary hidden></dl>`;
  return `<dl class="summary" data-summary>${
    entries.map(([k, v]) =>
      `<div><dt>${e(k)}</dt><dd title="${e(formatValue(v, 2000))}">${e(formatValue(v))}</dd></div>`
    ).join("")
  }</dl>`;
}

function actorFigure(actor: ActorModel): string {
  const state = formatState(actor.state);
  const chart = actor.chart ??
    `<p class="muted chart-note">${e(actor.chartNote ?? "No chart for this actor.")}</p>`;
  // Charts are laid out by their natural size, so none is shrunk past reading.
  const w = actor.chartWidth ?? 0;
  const size = w > 1100 ? "size-l" : w > 450 ? "size-m" : "size-s";
  return `<figure class="actor ${size}" data-path="${e(actor.path)}" data-machine="${
    e(actor.machine ?? "")
  }">
<figcaption><span class="actor-id">${e(actor.id)}</span>${
    actor.machine && actor.machine !== actor.id
      ? ` <span class="machine" title="machine">${e(actor.machine)}</span>`
      : ""
  } ${statusBadge(actor.status)}
<span class="state-line">state <output class="actor-state" data-actor-state>${
    e(state)
  }</output></span>
<span class="path" title="actor path">${e(actor.path)}</span></figcaption>
<div class="chart">${chart}</div>
${summaryList(actor.summary)}
</figure>`;
}

/** A column of the overview matrix: one actor path, the same on every instance. */
export interface MatrixColumn {
  /** Actor path (`supervisor/cluster_node`). */
  path: string;
  /** What it is filtered by: the machine's name, or the path's last part. */
  concern: string;
  /** Header text. */
  label: string;
}

/** The overview's filters (query parameters `concern` and `state`). */
export interface MatrixFilter {
  /** Only the columns of this concern ("" for all). */
  concern: string;
  /** Only instances with an actor whose state contains this text ("" for all). */
  state: string;
}

/** The actor whose chart is drawn (query parameters `instance` and `actor`). */
export interface ChartSelection {
  /** Instance id. */
  instance: string;
  /** The actor, with its chart. */
  actor: ActorModel;
}

/** Actors deeper than this are counted per instance, not given a column. */
const MATRIX_DEPTH = 2;

function depthOf(path: string): number {
  return path.split("/").length;
}

/**
 * The matrix's columns: every actor path (at most two levels deep) any instance reports, in
 * the order first seen, the root supervisor first.
 */
export function matrixColumns(instances: InstanceModel[]): MatrixColumn[] {
  const out = new Map<string, MatrixColumn>();
  for (const inst of instances) {
    for (const a of inst.actors) {
      if (depthOf(a.path) > MATRIX_DEPTH || out.has(a.path)) continue;
      const last = a.path.slice(a.path.lastIndexOf("/") + 1);
      out.set(a.path, { path: a.path, concern: a.machine ?? last, label: last });
    }
  }
  // The root supervisor first, then shallower before deeper, else as first seen.
  return [...out.values()].sort((a, b) =>
    (a.path === "supervisor" ? -1 : b.path === "supervisor" ? 1 : 0) ||
    depthOf(a.path) - depthOf(b.path)
  );
}

/** Columns left by the concern filter. */
export function visibleColumns(columns: MatrixColumn[], filter: MatrixFilter): MatrixColumn[] {
  return filter.concern ? columns.filter((c) => c.concern === filter.concern) : columns;
}

/** A state in one short line: its first active path, and how many more there are. */
export function compactState(text: string): string {
  const paths = text.split(", ");
  return paths.length > 1 ? `${paths[0]} +${paths.length - 1}` : text;
}

/** Whether an actor's state matches the state filter (case-insensitive text match). */
export function stateMatches(state: unknown, wanted: string): boolean {
  return !wanted || formatState(state).toLowerCase().includes(wanted.toLowerCase());
}

/** Whether an instance's row is shown under `filter`. */
export function rowMatches(
  inst: InstanceModel,
  columns: MatrixColumn[],
  filter: MatrixFilter,
): boolean {
  if (!filter.state) return true;
  const paths = new Set(visibleColumns(columns, filter).map((c) => c.path));
  return inst.actors.some((a) => paths.has(a.path) && stateMatches(a.state, filter.state));
}

/** The link that opens an actor's chart, keeping the filters. */
export function chartHref(
  instance: string,
  path: string,
  filter: MatrixFilter,
  extra: Record<string, string> = {},
): string {
  const q = new URLSearchParams({ ...extra, instance, actor: path });
  if (filter.concern) q.set("concern", filter.concern);
  if (filter.state) q.set("state", filter.state);
  return `/?${q}#chart`;
}

function matrixCell(
  inst: InstanceModel,
  col: MatrixColumn,
  filter: MatrixFilter,
  selected: { instance: string; path: string } | null,
  extra: Record<string, string>,
  cellHref?: (instance: string, path: string) => string | null,
): string {
  const a = inst.actors.find((x) => x.path === col.path);
  const hidden = filter.concern && col.concern !== filter.concern ? " hidden" : "";
  const attrs = `data-path="${e(col.path)}" data-concern="${e(col.concern)}"${hidden}`;
  if (!a) return `<td class="cell none" ${attrs}><span class="muted">—</span></td>`;
  const state = formatState(a.state);
  const match = filter.state && stateMatches(a.state, filter.state) ? " match" : "";
  const current = selected && selected.instance === inst.member.id && selected.path === a.path
    ? ` aria-current="true"`
    : "";
  const known = ["active", "done", "error", "stopped"].includes(a.status) ? a.status : "other";
  return `<td class="cell status-${known}${match}" ${attrs} data-state-text="${
    e(state)
  }"><a href="${
    e(cellHref?.(inst.member.id, a.path) ?? chartHref(inst.member.id, a.path, filter, extra))
  }" data-open-chart title="${
    e(`${inst.member.id} / ${a.path}: ${a.status}, ${state}. Open its chart.`)
  }"${current}>${statusBadge(a.status)}<output class="actor-state" data-actor-state>${
    e(compactState(state))
  }</output></a></td>`;
}

/**
 * One instance's row of the matrix: who it is (roles, heartbeat, supervisor, connection),
 * then one cell per column with its actor's status and state.
 */
export function renderInstance(
  inst: InstanceModel,
  columns: MatrixColumn[] = matrixColumns([inst]),
  options: {
    filter?: MatrixFilter;
    selected?: { instance: string; path: string } | null;
    linkParams?: Record<string, string>;
    cellHref?: (instance: string, path: string) => string | null;
  } = {},
): string {
  const filter = options.filter ?? { concern: "", state: "" };
  const m = inst.member;
  const id = `inst-${slug(m.id)}`;
  const roles = m.roles.map((r) =>
    `<span class="badge role" title="fencing token ${e(r.token)}">${e(r.role)}</span>`
  ).join(" ");
  const heartbeat = m.heartbeatAgeMs === null
    ? ""
    : `<span class="muted" title="age of its last heartbeat">♥ ${
      e(Math.round(m.heartbeatAgeMs))
    } ms</span>`;
  const supervisor = inst.supervisor
    ? `<span class="sup" title="${
      e(inst.supervisor.reason)
    }">supervisor <span data-supervisor-state>${
      e(inst.supervisor.state.split(".").pop())
    }</span></span>`
    : "";
  const extra = inst.actors.filter((a) => depthOf(a.path) > MATRIX_DEPTH).length +
    inst.listed.length;
  const more = extra
    ? `<span class="muted" title="nested or ended actors, not in the matrix">+${
      e(extra)
    } nested</span>`
    : "";
  const head = `<th scope="row" id="${id}"><span class="inst-id">${e(m.id)}</span>${
    inst.self ? ` <span class="badge self" title="serving this page">this</span>` : ""
  } ${roles}<br><span class="conn" data-conn>${
    inst.error ? "unreachable" : "snapshot"
  }</span> ${heartbeat} ${supervisor} ${more}</th>`;
  const cells = inst.error
    ? `<td class="error" colspan="${
      Math.max(columns.length, 1)
    }" role="alert">Cannot read this instance's actors: ${e(inst.error)}</td>`
    : columns.map((c) =>
      matrixCell(
        inst,
        c,
        filter,
        options.selected ?? null,
        options.linkParams ?? {},
        options.cellHref,
      )
    ).join("");
  const known = new Set(columns.map((c) => c.path));
  const outside = inst.actors.some((a) => depthOf(a.path) <= MATRIX_DEPTH && !known.has(a.path));
  const hidden = rowMatches(inst, columns, filter) ? "" : " hidden";
  return `<tr class="instance" data-instance="${e(m.id)}"${inst.self ? " data-self" : ""}${
    outside ? " data-new-columns" : ""
  } data-roles="${e(JSON.stringify(m.roles))}"${hidden}>${head}${cells}</tr>`;
}

/** The filter form: plain GET, so it works without JavaScript; the script filters in place. */
function filterForm(
  columns: MatrixColumn[],
  filter: MatrixFilter,
  count: number,
  keep: Record<string, string>,
): string {
  const concerns = [...new Set(columns.map((c) => c.concern))].sort();
  const hidden = Object.entries(keep).map(([k, v]) =>
    `<input type="hidden" name="${e(k)}" value="${e(v)}">`
  ).join("");
  return `<form class="filters" method="get" action="/" data-filters>${hidden}
<label>Concern <select name="concern"><option value="">all</option>${
    concerns.map((c) =>
      `<option value="${e(c)}"${c === filter.concern ? " selected" : ""}>${e(c)}</option>`
    ).join("")
  }</select></label>
<label>State contains <input name="state" value="${
    e(filter.state)
  }" maxlength="100" placeholder="e.g. degraded" autocomplete="off"></label>
<button type="submit">Filter</button> <a href="/">clear</a>
<span class="muted" data-shown>${e(count)} instance${count === 1 ? "" : "s"} shown</span>
</form>`;
}

/** Up to this many visible columns, a cell's state text may use the width it has. */
const FEW_COLUMNS = 3;

/** The overview matrix: instances × actors, with the filter form above it. */
export function renderMatrix(
  model: Pick<PageModel, "instances" | "clusterError">,
  options: {
    filter?: MatrixFilter;
    selected?: { instance: string; path: string } | null;
    linkParams?: Record<string, string>;
    /** Where a cell links to instead of the page's chart (the report: its own anchors). */
    cellHref?: (instance: string, path: string) => string | null;
    /** Leave the filter form out (the report, which no server answers). */
    noForm?: boolean;
  } = {},
): string {
  const filter = options.filter ?? { concern: "", state: "" };
  const columns = matrixColumns(model.instances);
  const warning = model.clusterError
    ? `<p class="error" role="alert">Cannot list the cluster's instances (${
      e(model.clusterError)
    }); showing this instance only.</p>`
    : "";
  const shown = model.instances.filter((i) => rowMatches(i, columns, filter)).length;
  const visible = columns.filter((c) => !filter.concern || c.concern === filter.concern).length;
  const head = columns.map((c) => {
    const hidden = filter.concern && c.concern !== filter.concern ? " hidden" : "";
    return `<th scope="col" data-path="${e(c.path)}" data-concern="${e(c.concern)}" title="${
      e(c.path)
    }"${hidden}>${e(c.label)}</th>`;
  }).join("");
  return `${warning}${
    options.noForm ? "" : filterForm(columns, filter, shown, options.linkParams ?? {})
  }<div class="matrix-wrap"><table class="matrix${
    visible <= FEW_COLUMNS ? " few" : ""
  }" data-matrix data-few-columns="${FEW_COLUMNS}">
<caption>Each row is an instance, each column an actor; a cell shows the actor's status and state and opens its chart.</caption>
<thead><tr><th scope="col">Instance</th>${head}</tr></thead>
<tbody data-instances>${
    model.instances.map((i) => renderInstance(i, columns, { ...options, filter })).join("\n")
  }</tbody></table></div>`;
}

/** The chart panel: the selected actor's statechart with its live state, or how to pick one. */
export function renderChartPanel(
  selection: ChartSelection | null,
  note?: string,
): string {
  if (!selection) {
    return `<div data-chart-panel><p class="muted">${
      e(note ?? "Pick a cell of the matrix to draw that actor's statechart here.")
    }</p></div>`;
  }
  return `<div data-chart-panel id="chart-${
    slug(`${selection.instance}\n${selection.actor.path}`)
  }" data-instance="${e(selection.instance)}" data-path="${e(selection.actor.path)}"><h3>${
    e(selection.instance)
  } <span class="muted">/</span> ${e(selection.actor.path)}</h3>${
    actorFigure(selection.actor)
  }</div>`;
}

/** A timeline row: the newest of its identical transitions, with how many were folded in. */
export interface TimelineRow extends TransitionView {
  /** Identical transitions (same instance, actor, event and new state) it stands for. */
  count: number;
  /** When the oldest of them happened (ms). */
  since: number;
}

/** What makes two transitions identical on the timeline. */
export function timelineSignature(t: TransitionView): string {
  return JSON.stringify([t.instance, t.path, t.event, t.state]);
}

/**
 * Every transition of every instance, newest first. Identical transitions are folded into
 * their newest one with a count, so periodic ones (heartbeats) do not push the rest out.
 */
export function timelineRows(
  instances: InstanceModel[],
  maxRows = TIMELINE_ROWS,
): TimelineRow[] {
  const rows = new Map<string, TimelineRow>();
  const all = instances.flatMap((i) => i.transitions)
    .sort((a, b) => b.at - a.at || b.seq - a.seq);
  for (const t of all) {
    const sig = timelineSignature(t);
    const row = rows.get(sig);
    if (row) {
      row.count++;
      row.since = t.at;
    } else rows.set(sig, { ...t, count: 1, since: t.at });
  }
  return [...rows.values()].slice(0, maxRows);
}

function originText(o: Origin): string {
  return `${o.kind} from ${o.from.instance}/${o.from.actor}`;
}

/** The timeline table: newest first, identical transitions folded. */
export function renderTimeline(instances: InstanceModel[], maxRows = TIMELINE_ROWS): string {
  const rows = timelineRows(instances, maxRows);
  return `<table class="timeline" id="timeline-table">
<caption>Newest first, identical transitions folded into one row; times are each instance's clock (UTC).</caption>
<thead><tr><th scope="col">Time</th><th scope="col">Instance</th><th scope="col">Actor</th><th scope="col">Event</th><th scope="col">New state</th></tr></thead>
<tbody data-timeline>${
    rows.map((t) =>
      `<tr data-key="${e(`${t.instance} ${t.seq}`)}" data-sig="${
        e(timelineSignature(t))
      }" data-at="${e(t.at)}" data-count="${e(t.count)}" data-since="${e(t.since)}"><td>${
        timeTag(t.at)
      }</td><td>${e(t.instance)}</td><td>${e(t.path)}</td><td><code>${e(t.event)}</code>${
        t.origin ? ` <span class="muted">${e(originText(t.origin))}</span>` : ""
      }${
        t.count > 1
          ? ` <span class="repeat" title="identical transitions folded into this row">×${
            e(t.count)
          } since ${timeTag(t.since)}</span>`
          : ""
      }</td><td>${e(formatState(t.state))}</td></tr>`
    ).join("\n")
  }</tbody></table>${
    rows.length ? "" : `<p class="muted" data-timeline-empty>No transitions recorded yet.</p>`
  }`;
}

/** Transitions caused by a transport message, oldest first (at most the last 40). */
export function correlatedMessages(
  instances: InstanceModel[],
  maxRows = MESSAGE_ROWS,
): TransitionView[] {
  return instances.flatMap((i) => i.transitions)
    .filter((t) => t.origin !== undefined)
    .sort((a, b) => a.at - b.at || a.seq - b.seq)
    .slice(-maxRows);
}

function truncate(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * The messages between instances as a sequence diagram (one lifeline per instance, one
 * arrow per transition a message caused) with the same facts as a table.
 */
export function renderMessages(
  instances: InstanceModel[],
  maxRows = MESSAGE_ROWS,
  options: { recorded?: boolean } = {},
): string {
  const messages = correlatedMessages(instances, maxRows);
  const note = options.recorded
    ? `<p class="note">The recorded messages of the range: an arrow from the sender to the receiving actor, labelled with the state it caused (or "no state change"); times are the Redis server's clock when it was recorded.</p>`
    : `<p class="note">An arrow is a transition that a transport message caused, drawn from the sender named in the message's delivery metadata (<code>origin</code>) to the receiving actor; dashed ones were broadcasts. Send and receive times come from different clocks. Transitions without that metadata are not guessed at, and messages that changed no state do not appear.</p>`;
  if (!messages.length) {
    return `${note}<p class="muted" data-messages-empty>No correlated messages among the recent transitions.</p>`;
  }
  const lanes = [...new Set([...instances.map((i) => i.member.id)])];
  for (const t of messages) {
    for (const id of [t.origin!.from.instance, t.instance]) if (!lanes.includes(id)) lanes.push(id);
  }
  const laneW = 190;
  const rowH = 34;
  const top = 44;
  const width = Math.max(lanes.length * laneW, 380);
  const height = top + messages.length * rowH + 16;
  const x = (id: string) => laneW / 2 + lanes.indexOf(id) * laneW;
  const parts: string[] = [];
  lanes.forEach((id) => {
    parts.push(
      `<text class="lane-label" x="${x(id)}" y="20" text-anchor="middle">${
        e(truncate(id, 24))
      }</text><line class="lifeline" x1="${x(id)}" y1="30" x2="${x(id)}" y2="${height - 6}"/>`,
    );
  });
  messages.forEach((t, i) => {
    const o = t.origin!;
    const y = top + i * rowH + 20;
    const x1 = x(o.from.instance);
    const x2 = x(t.instance);
    const actor = t.path.slice(t.path.lastIndexOf("/") + 1);
    const label = truncate(`${actor}: ${t.event} → ${formatState(t.state)}`, 40);
    const kind = `arrow kind-${o.kind.replace(/[^a-z]/gi, "").toLowerCase()}`;
    const title =
      `${o.kind} ${o.id} from ${o.from.instance}/${o.from.actor} to ${t.instance}/${t.path}: ${t.event}, now ${
        formatState(t.state)
      }`;
    if (x1 === x2) {
      parts.push(
        `<g class="msg"><title>${e(title)}</title><path class="${e(kind)}" d="M${x1},${
          y - 8
        } h26 v12 h-22"/><polygon class="head" points="${x1},${y + 4} ${x1 + 8},${y} ${x1 + 8},${
          y + 8
        }"/><text x="${x1 + 32}" y="${y}" class="msg-label">${e(label)}</text></g>`,
      );
      return;
    }
    const dir = x2 > x1 ? 1 : -1;
    parts.push(
      `<g class="msg"><title>${e(title)}</title><line class="${e(kind)}" x1="${x1}" y1="${y}" x2="${
        x2 - dir * 6
      }" y2="${y}"/><polygon class="head" points="${x2},${y} ${x2 - dir * 9},${y - 4} ${
        x2 - dir * 9
      },${y + 4}"/><text x="${(x1 + x2) / 2}" y="${y - 5}" text-anchor="middle" class="msg-label">${
        e(label)
      }</text></g>`,
    );
  });
  const table = `<details><summary>As a table</summary><table>
<thead><tr><th scope="col">Sent (sender clock)</th><th scope="col">From</th><th scope="col">Kind</th><th scope="col">Received</th><th scope="col">To</th><th scope="col">Event</th><th scope="col">New state</th><th scope="col">Message id</th></tr></thead><tbody>${
    messages.map((t) =>
      `<tr><td>${timeTag(t.origin!.sentAt)}</td><td>${
        e(`${t.origin!.from.instance}/${t.origin!.from.actor}`)
      }</td><td>${e(t.origin!.kind)}</td><td>${timeTag(t.at)}</td><td>${
        e(`${t.instance}/${t.path}`)
      }</td><td><code>${e(t.event)}</code></td><td>${e(formatState(t.state))}</td><td>${
        e(t.origin!.id)
      }</td></tr>`
    ).join("")
  }</tbody></table></details>`;
  return `${note}<svg class="sequence" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-label="${
    e(`Sequence of ${messages.length} messages between instances`)
  }">${parts.join("")}</svg>${table}`;
}

/** A small line chart of `values` (oldest first) with an accessible name. */
export function sparkline(
  values: number[],
  options: { label: string; format: (v: number) => string },
): string {
  const w = 120;
  const h = 28;
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return `<span class="muted">no data</span>`;
  const min = Math.min(...finite);
  const max = Math.max(...finite);
  const span = max - min || 1;
  const step = finite.length > 1 ? w / (finite.length - 1) : 0;
  const pts = finite.map((v, i) =>
    `${(i * step).toFixed(1)},${(h - 2 - ((v - min) / span) * (h - 4)).toFixed(1)}`
  );
  const last = finite[finite.length - 1];
  const name = `${options.label}: latest ${options.format(last)}, range ${options.format(min)} to ${
    options.format(max)
  } over ${finite.length} samples`;
  const line = finite.length > 1
    ? `<polyline points="${pts.join(" ")}"/>`
    : `<line x1="0" y1="${h / 2}" x2="${w}" y2="${h / 2}"/>`;
  return `<svg class="spark" viewBox="0 0 ${w} ${h}" width="${w}" height="${h}" role="img" aria-label="${
    e(name)
  }">${line}<circle cx="${finite.length > 1 ? w : w / 2}" cy="${
    finite.length > 1 ? pts[pts.length - 1].split(",")[1] : h / 2
  }" r="2"/></svg>`;
}

function unavailable(reading: Reading<unknown> & { ok: false }): string {
  if (reading.declined) {
    return `<p class="unavailable"><strong>Unavailable</strong>: ${e(reading.reason)}</p>`;
  }
  return reading.missing
    ? `<p class="unavailable"><strong>Unavailable</strong>: this instance does not serve <code>GET ${
      e(reading.source)
    }</code>.</p>`
    : `<p class="unavailable error"><strong>Unavailable</strong>: <code>GET ${
      e(reading.source)
    }</code> failed: ${e(reading.reason)}.</p>`;
}

function card(id: string, title: string, body: string): string {
  return `<section class="card panel" id="panel-${id}" aria-labelledby="panel-${id}-h"><h3 id="panel-${id}-h">${
    e(title)
  }</h3>${body}</section>`;
}

function sessionsPanel(r: PanelsModel["sessions"]): string {
  if (!r.ok) return card("sessions", "Sessions", unavailable(r));
  const figures = r.data.figures.length
    ? `<dl class="figures">${
      r.data.figures.map((f) =>
        `<div><dt>${e(f.label)}</dt><dd>${e(formatQuantity(f.value, ""))}</dd></div>`
      ).join("")
    }</dl>`
    : `<p class="muted">No figures in the answer.</p>`;
  const note = r.data.note ? `<p class="note">${e(r.data.note)}</p>` : "";
  return card(
    "sessions",
    "Sessions",
    `${figures}${note}<p class="source">from <code>${e(r.source)}</code></p>`,
  );
}

/** A running backup's progress: a bar (when the total is known) and one line of figures. */
function backupProgressCell(p: BackupRowProgress): string {
  const known = p.total !== null && p.total > 0;
  const percent = known ? Math.min(100, Math.floor((p.done / p.total!) * 100)) : null;
  const figures = [
    p.phase,
    known
      ? `${formatQuantity(p.done, "bytes")} of ${formatQuantity(p.total!, "bytes")}`
      : formatQuantity(p.done, "bytes"),
    ...(p.rate !== null ? [`${formatQuantity(p.rate, "bytes")}/s`] : []),
    ...(p.eta !== null
      ? [`ETA ${p.eta < 120 ? `${p.eta} s` : `${Math.round(p.eta / 60)} min`}`]
      : []),
  ].join(" · ");
  return `<div>${
    known
      ? `<progress max="100" value="${percent}" aria-label="${
        e(p.phase)
      }: ${percent} %">${percent} %</progress> `
      : ""
  }<span class="muted">${e(figures)}</span></div>`;
}

function backupsPanel(r: PanelsModel["backups"]): string {
  if (!r.ok) return card("backups", "Backups", unavailable(r));
  if (!r.data.length) {
    return card(
      "backups",
      "Backups",
      `<p class="muted">No backups yet.</p><p class="source">from <code>${e(r.source)}</code></p>`,
    );
  }
  const rows = r.data.map((b) =>
    `<tr><td>${e(truncate(b.id, 18))}</td><td>${e(b.kind ?? "—")}</td><td>${e(b.status ?? "—")}${
      b.verified ? ` <span class="badge ok">verified</span>` : ""
    }${
      b.error ? ` <span class="error" title="${e(b.error)}">${e(truncate(b.error, 60))}</span>` : ""
    }</td><td>${b.startedAt ? timeTag(b.startedAt) : "—"}</td><td>${
      b.sizeBytes === null ? "—" : e(formatQuantity(b.sizeBytes, "bytes"))
    }</td></tr>${
      b.progress
        ? `<tr class="backup-progress"><td colspan="5">${backupProgressCell(b.progress)}</td></tr>`
        : ""
    }`
  ).join("");
  return card(
    "backups",
    "Backups",
    `<table><caption class="visually-hidden">Backup history, newest first</caption><thead><tr><th scope="col">Backup</th><th scope="col">Kind</th><th scope="col">Status</th><th scope="col">Started (UTC)</th><th scope="col">Size</th></tr></thead><tbody>${rows}</tbody></table><p class="source">from <code>${
      e(r.source)
    }</code></p>`,
  );
}

function replicationPanel(r: PanelsModel["replication"]): string {
  if (!r.ok) return card("replication", "Replication", unavailable(r));
  if (!r.data.length) {
    return card(
      "replication",
      "Replication",
      `<p class="muted">No database nodes reported.</p><p class="source">from <code>${
        e(r.source)
      }</code></p>`,
    );
  }
  const rows = r.data.map((n) => {
    const lag = n.lagSeconds !== null
      ? formatQuantity(n.lagSeconds, "seconds")
      : n.lagBytes !== null
      ? formatQuantity(n.lagBytes, "bytes")
      : "—";
    const bytes = n.lagSeconds !== null && n.lagBytes !== null
      ? ` <span class="muted">${e(formatQuantity(n.lagBytes, "bytes"))}</span>`
      : "";
    const unit = n.lagSeconds !== null ? "seconds" : "bytes";
    return `<tr><td>${e(n.name)}</td><td><span class="badge role-${
      e((n.role ?? "").replace(/[^a-z]/gi, "").toLowerCase())
    }">${e(n.role ?? "—")}</span></td><td>${e(n.state ?? "—")}</td><td>${e(lag)}${bytes}</td><td>${
      n.history.length > 1
        ? sparkline(n.history, {
          label: `${n.name} lag`,
          format: (v) => formatQuantity(v, unit),
        })
        : ""
    }</td></tr>`;
  }).join("");
  return card(
    "replication",
    "Replication",
    `<table><caption class="visually-hidden">Database nodes with role and lag</caption><thead><tr><th scope="col">Node</th><th scope="col">Role</th><th scope="col">State</th><th scope="col">Lag</th><th scope="col">Trend</th></tr></thead><tbody>${rows}</tbody></table><p class="source">from <code>${
      e(r.source)
    }</code></p>`,
  );
}

function metricsPanel(p: PanelsModel): string {
  const tables: string[] = [];
  const notes: string[] = [];
  const dashboards = p.dashboards.ok ? p.dashboards.data : [];
  // Dashboards that all fail for one reason (no metrics store here) say it once.
  const reasons = new Set(dashboards.flatMap((d) => d.series.length ? ["(data)"] : d.errors));
  if (dashboards.length && reasons.size === 1 && !reasons.has("(data)")) {
    notes.push(
      `<p class="unavailable"><strong>Dashboards unavailable</strong>: ${
        e([...reasons][0].replace(/^dashboards are unavailable:\s*/i, ""))
      }</p>`,
    );
  } else {
    for (const d of dashboards) {
      const rows = d.series.map((s) => {
        const values = s.points.map((pt) => pt[1]);
        const fmt = (v: number) => `${formatQuantity(v, "")}${s.unit ? ` ${s.unit}` : ""}`;
        const latest = values[values.length - 1];
        return `<tr><th scope="row">${e(s.name)}</th><td>${
          latest === undefined ? "—" : e(fmt(latest))
        }</td><td>${
          values.length ? sparkline(values, { label: s.name, format: fmt }) : ""
        }</td></tr>`;
      }).join("");
      const errors = d.errors.map((m) => `<tr><td colspan="3" class="error">${e(m)}</td></tr>`)
        .join("");
      tables.push(
        `<table class="metrics"><caption>Dashboard ${
          e(d.title)
        } <span class="muted">(<a href="/dashboards/${encodeURIComponent(d.name)}">/dashboards/${
          e(d.name)
        }</a>)</span></caption><tbody>${
          rows || errors ? rows + errors : `<tr><td class="muted">no series in range</td></tr>`
        }</tbody></table>`,
      );
    }
  }
  if (!p.dashboards.ok && !p.dashboards.missing) notes.push(unavailable(p.dashboards));
  const allMissing = p.metrics.length > 0 &&
    p.metrics.every((m) => !m.reading.ok && m.reading.missing);
  if (allMissing) {
    notes.push(
      `<p class="unavailable"><strong>Unavailable</strong>: no instance serves <code>GET /metrics</code>.</p>`,
    );
  }
  for (const { instance, reading } of allMissing ? [] : p.metrics) {
    const caption = `<caption>${
      e(instance)
    } <span class="muted">(/metrics, sampled while this console is open)</span></caption>`;
    if (!reading.ok) {
      tables.push(
        `<table class="metrics">${caption}<tbody><tr><td>${
          unavailable(reading)
        }</td></tr></tbody></table>`,
      );
      continue;
    }
    const rows = reading.data.map((s) => {
      const fmt = (v: number) => `${formatQuantity(v, s.unit)}${s.rate ? "/s" : ""}`;
      const latest = s.values[s.values.length - 1];
      // The common prefix is noise in a narrow column; the full name is the tooltip.
      const short = s.name.replace(/^rootstream_/, "");
      return `<tr><th scope="row"><code title="${e(s.name)}">${e(short)}</code>${
        s.labels ? ` <span class="muted">${e(truncate(s.labels, 40))}</span>` : ""
      }</th><td>${latest === undefined ? "—" : e(fmt(latest))}</td><td>${
        s.values.length ? sparkline(s.values, { label: s.name, format: fmt }) : ""
      }</td></tr>`;
    }).join("");
    tables.push(
      `<table class="metrics">${caption}<tbody>${
        rows || `<tr><td class="muted">no metrics exposed</td></tr>`
      }</tbody></table>`,
    );
  }
  if (!tables.length && !notes.length) {
    notes.push(`<p class="muted">No instances to read metrics from.</p>`);
  }
  return card(
    "metrics",
    "Key metrics",
    `${notes.join("")}${tables.length ? `<div class="metrics-grid">${tables.join("")}</div>` : ""}`,
  );
}

/** The concern panels: sessions, backups, replication, key metrics. */
export function renderPanels(p: PanelsModel): string {
  return `<div class="panels" data-panels>${sessionsPanel(p.sessions)}${backupsPanel(p.backups)}${
    replicationPanel(p.replication)
  }${metricsPanel(p)}</div>`;
}

/** Everything of the page that depends on the query: filters and the selected chart. */
export interface PageView {
  /** Filters of the matrix. */
  filter: MatrixFilter;
  /** The actor whose chart is drawn. */
  chart: ChartSelection | null;
  /** Why no chart is drawn though one was asked for. */
  chartNote?: string;
  /** The time control (console/history.ts), rendered. */
  timeControl?: string;
  /** True when the page shows a recorded moment, not the live cluster. */
  history?: boolean;
  /** Extra query parameters the matrix's links keep (the recorded moment). */
  linkParams?: Record<string, string>;
}

/** The full page. */
export function renderPage(
  model: PageModel,
  view: PageView = { filter: { concern: "", state: "" }, chart: null },
): string {
  const selected = view.chart
    ? { instance: view.chart.instance, path: view.chart.actor.path }
    : null;
  const count = model.instances.length;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>RootStream console — ${e(model.instance)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/console/console.css">
<script src="/console/console.js" defer></script>
</head>
<body data-self="${e(model.instance)}"${view.history ? ` data-mode="history"` : ""}>
<a class="skip" href="#instances">Skip to the matrix</a>
<header class="top">
<div class="brand"><h1>RootStream <span>review console</span></h1>
<p class="meta">served by <strong>${e(model.instance)}</strong> · cluster mode <strong>${
    e(model.mode)
  }</strong> · <span data-instance-count>${e(count)} live instance${
    count === 1 ? "" : "s"
  }</span> · rendered ${timeTag(model.generatedAt)} UTC</p></div>
<p class="live" id="live-status" role="status" aria-live="polite" data-live>Static snapshot. <a href="/">Reload</a> for fresh data; live updates need JavaScript.</p>
${renderViewer(model.viewer ?? null)}
<nav class="jump" aria-label="Sections"><a href="#instances">Matrix</a><a href="#chart">Chart</a><a href="#timeline">Transitions</a><a href="#messages">Messages</a><a href="#overview">Concerns</a></nav>
</header>
<main>
<section id="time" aria-labelledby="time-h"><h2 id="time-h">Time</h2>${
    view.timeControl ?? ""
  }</section>
<section id="instances" aria-labelledby="instances-h"><h2 id="instances-h">Instances × actors</h2>
<div data-matrix-host>${
    renderMatrix(model, { filter: view.filter, selected, linkParams: view.linkParams })
  }</div></section>
<section id="chart" aria-labelledby="chart-h"><h2 id="chart-h">Statechart</h2>
<p class="legend"><span class="swatch"></span> marks the actor's current state.</p>
${renderChartPanel(view.chart, view.chartNote)}</section>
<div class="split">
<section id="timeline" aria-labelledby="timeline-h"><h2 id="timeline-h">${
    view.history ? "Transitions in the range" : "Recent transitions"
  }</h2>
${renderTimeline(model.instances)}</section>
<section id="messages" aria-labelledby="messages-h"><h2 id="messages-h">Messages between instances</h2>
<div data-messages>${
    renderMessages(model.instances, undefined, { recorded: view.history })
  }</div></section>
</div>
<section id="overview" aria-labelledby="overview-h"><h2 id="overview-h">Concerns</h2>
<div id="panels">${renderPanels(model.panels)}</div></section>
</main>
<footer><p>RootStream runtime · <a href="/actors">/actors</a> · <a href="/cluster">/cluster</a> · <a href="/health">/health</a></p></footer>
</body>
</html>
`;
}
