/**
 * Time travel in the review console: the recorded history (GET /history, Redis server
 * clock) turned into what the live page shows — every instance's actors in the states
 * they were in at a moment, the transitions and messages of a range — and the
 * self-contained HTML report of a range that a postmortem attaches.
 *
 * Pure functions of validated entries; the route (api/core/console.ts) reads them.
 * @module
 */
import type { ActorModel, InstanceModel, TransitionView } from "./render.ts";
import { escapeHtml as e, formatState, timeTag } from "./html.ts";

/** A recorded transition, as GET /history answers it. */
export interface RecordedTransition {
  /** Kind. */
  k: "transition";
  /** Stream entry id. */
  entryId: string;
  /** Redis server clock (ms). */
  serverAt: number;
  /** Instance it happened on. */
  instance: string;
  /** Instance clock (ms). */
  at: number;
  /** Sequence number on that instance. */
  seq: number;
  /** Actor path. */
  path: string;
  /** Event type. */
  event: string;
  /** State after it. */
  state: unknown;
  /** Message id that caused it. */
  cause?: string;
  /** Machine (chart) name. */
  machine?: string;
}

/** A recorded message between instances. */
export interface RecordedMessage {
  /** Kind. */
  k: "message";
  /** Stream entry id. */
  entryId: string;
  /** Redis server clock (ms). */
  serverAt: number;
  /** Receiving instance. */
  instance: string;
  /** Message id. */
  id: string;
  /** send, broadcast or request. */
  kind: string;
  /** Sender. */
  from: { instance: string; actor: string };
  /** Target. */
  to: { instance: string; actor: string };
  /** Event type. */
  event: string;
  /** Correlation id. */
  corr?: string;
  /** Sender clock (ms). */
  sentAt: number;
}

/** One recorded entry. */
export type Recorded = RecordedTransition | RecordedMessage;

/** A moment and the range leading to it (server clock, ms). */
export interface Moment {
  /** The range's start. */
  from: number;
  /** The moment shown. */
  at: number;
  /**
   * When the moment is one recorded event: its stream entry's sequence within the
   * millisecond `at` (an instance records a quarter second of transitions in one batch, which
   * Redis stores in one millisecond: stepping event by event has to look inside it). Absent:
   * everything recorded in `at`.
   */
  seq?: number | null;
}

/** A stream entry id `<ms>-<seq>` as two numbers (ids come from Redis, not from clients). */
function entryPosition(entryId: string): [number, number] {
  const dash = entryId.indexOf("-");
  return [Number(entryId.slice(0, dash)), Number(entryId.slice(dash + 1))];
}

/**
 * Where an entry is relative to the moment: negative before it, 0 the moment's own entry
 * (or any entry of its millisecond when it has no `seq`), positive after it.
 */
export function relativeTo(entry: { entryId: string }, moment: Moment): number {
  const [ms, seq] = entryPosition(entry.entryId);
  if (ms !== moment.at) return ms - moment.at;
  return moment.seq === null || moment.seq === undefined ? 0 : seq - moment.seq;
}

/** Parses `seq` (a stream entry's sequence in its millisecond); null when it is not one. */
export function parseSeq(text: string | undefined): number | null {
  const trimmed = text?.trim() ?? "";
  if (!trimmed || trimmed.length > 12) return null;
  for (const c of trimmed) if (c < "0" || c > "9") return null;
  return Number(trimmed);
}

function emptyInstance(id: string): InstanceModel {
  return {
    member: { id, url: "", roles: [], heartbeatAgeMs: null },
    self: false,
    error: null,
    supervisor: null,
    transport: null,
    actors: [],
    listed: [],
    transitions: [],
  };
}

/**
 * Every instance's actors in the state of their last transition at or before `at`, from
 * entries newest first; instances in id order. Transitions of the range `[from, at]` (oldest
 * first) and the messages among them become each instance's `transitions`, as the timeline
 * and the sequence diagram read them.
 */
export function instancesAt(
  newestFirst: readonly Recorded[],
  range: readonly Recorded[],
  moment: Moment,
): InstanceModel[] {
  const byId = new Map<string, InstanceModel>();
  const inst = (id: string) => {
    let model = byId.get(id);
    if (!model) byId.set(id, model = emptyInstance(id));
    return model;
  };
  for (const entry of newestFirst) {
    if (entry.k !== "transition" || relativeTo(entry, moment) > 0) continue;
    const model = inst(entry.instance);
    if (model.actors.some((a) => a.path === entry.path)) continue;
    const actor: ActorModel = {
      id: entry.path.slice(entry.path.lastIndexOf("/") + 1),
      path: entry.path,
      machine: entry.machine ?? null,
      status: "active",
      state: entry.state,
      summary: {},
      updatedAt: entry.serverAt,
      chart: null,
      chartNote: null,
      chartWidth: null,
    };
    model.actors.push(actor);
    if (entry.path === "supervisor") {
      model.supervisor = { state: formatState(entry.state), reason: "" };
    }
  }
  const inRange = range.filter((r) => r.serverAt >= moment.from && relativeTo(r, moment) <= 0);
  const caused = new Map<string, RecordedTransition>();
  for (const r of inRange) if (r.k === "transition" && r.cause) caused.set(r.cause, r);
  for (const r of inRange) {
    if (r.k === "transition") {
      const view: TransitionView = {
        seq: r.seq,
        path: r.path,
        event: r.event,
        state: r.state,
        at: r.serverAt,
        instance: r.instance,
      };
      // A transition a message caused is drawn as that message's arrow instead.
      if (!r.cause) inst(r.instance).transitions.push(view);
      else {
        const m = inRange.find((x) => x.k === "message" && x.id === r.cause) as
          | RecordedMessage
          | undefined;
        inst(r.instance).transitions.push({
          ...view,
          origin: m
            ? { id: m.id, from: m.from, kind: m.kind, sentAt: m.sentAt }
            : { id: r.cause, from: { instance: "?", actor: "?" }, kind: "send", sentAt: r.at },
        });
      }
    } else if (!caused.has(r.id)) {
      // A message that changed no state still belongs on the diagram of a range.
      inst(r.instance).transitions.push({
        seq: 0,
        path: r.to.actor,
        event: r.event,
        state: "(no state change)",
        at: r.serverAt,
        instance: r.instance,
        origin: { id: r.id, from: r.from, kind: r.kind, sentAt: r.sentAt },
      });
    }
  }
  for (const model of byId.values()) {
    model.actors.sort((a, b) =>
      a.path.split("/").length - b.path.split("/").length || a.path.localeCompare(b.path)
    );
  }
  return [...byId.values()].sort((a, b) => a.member.id.localeCompare(b.member.id));
}

/** Parses a moment given as epoch milliseconds or an ISO date; null when it is neither. */
export function parseMoment(text: string | undefined): number | null {
  if (!text) return null;
  const trimmed = text.trim();
  const n = Number(trimmed);
  if (trimmed !== "" && Number.isFinite(n)) return Math.floor(n);
  const parsed = Date.parse(trimmed);
  return Number.isFinite(parsed) ? parsed : null;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/** Where a step link goes: a millisecond, and the event in it when it is one event. */
export interface StepTarget {
  /** Redis server clock (ms). */
  at: number;
  /** The event's stream sequence within `at`, or null for the whole millisecond. */
  seq: number | null;
}

/** Links and form of the time control. */
export interface TimeControl {
  /** The moment shown, or null on the live page. */
  moment: Moment | null;
  /** Position (server time, stream sequence) of the previous / next recorded event
   * (matching the concern filter). */
  prev: StepTarget | null;
  /** Next one. */
  next: StepTarget | null;
  /** Query parameters to keep on every link (filters, selected chart). */
  keep: Record<string, string>;
  /** Why the history could not be read, if it could not. */
  error?: string | null;
}

function href(params: Record<string, string>): string {
  return `/?${new URLSearchParams(params)}`;
}

/** The time control: a plain GET form, step links, the export link, back to live. */
export function renderTimeControl(control: TimeControl): string {
  const m = control.moment;
  const keep = control.keep;
  const fields = Object.entries(keep).map(([k, v]) =>
    `<input type="hidden" name="${e(k)}" value="${e(v)}">`
  ).join("");
  const step = (label: string, to: StepTarget | null, rel: string) =>
    to === null || !m
      ? `<span class="muted">${e(label)}</span>`
      : `<a rel="${rel}" data-step="${rel}" href="${
        e(href({
          ...keep,
          from: String(m.from),
          at: String(to.at),
          ...(to.seq === null ? {} : { seq: String(to.seq) }),
        }))
      }">${e(label)}</a>`;
  const error = control.error
    ? `<p class="unavailable"><strong>History unavailable</strong>: ${e(control.error)}</p>`
    : "";
  const status = m
    ? `<p class="history-mode" data-history-at="${e(m.at)}">Showing the cluster at <strong>${
      timeTag(m.at)
    }</strong> UTC (Redis server clock), the range from ${timeTag(m.from)}. <a href="${
      e(href(keep))
    }">Back to live</a></p>`
    : `<p class="muted">Live. Pick a moment to see every instance as it was then.</p>`;
  const exportLink = m
    ? ` <a data-export href="${
      e(`/console/export?${new URLSearchParams({ from: String(m.from), to: String(m.at) })}`)
    }" download>Export this range as a report</a>`
    : "";
  return `<div class="time-control" data-time-control>${error}${status}
<form method="get" action="/" class="filters">${fields}
<label>From <input name="from" value="${m ? e(iso(m.from)) : ""}" placeholder="${
    e(iso(Date.UTC(2026, 0, 1)))
  }" size="26" maxlength="40"></label>
<label>Moment <input name="at" value="${
    m ? e(iso(m.at)) : ""
  }" size="26" maxlength="40" required></label>
<button type="submit">Show</button>
${step("◀ previous event", control.prev, "prev")} ${
    step("next event ▶", control.next, "next")
  }${exportLink}
</form></div>`;
}

/** The self-contained report of a range: the page's parts, its stylesheet inlined, no script. */
export function renderReport(options: {
  moment: Moment;
  css: string;
  matrix: string;
  charts: string[];
  timeline: string;
  messages: string;
  generatedAt: number;
  instance: string;
}): string {
  const m = options.moment;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>RootStream report ${e(iso(m.from))} – ${e(iso(m.at))}</title>
<style>${options.css.replaceAll("</style", "<\\/style")}</style>
</head>
<body class="report">
<header class="top"><div class="brand"><h1>RootStream <span>cluster report</span></h1>
<p class="meta">from ${timeTag(m.from)} to ${
    timeTag(m.at)
  } UTC (Redis server clock) · exported by <strong>${e(options.instance)}</strong> at ${
    timeTag(options.generatedAt)
  } UTC</p></div></header>
<main>
<section id="instances"><h2>Instances × actors at the end of the range</h2>${options.matrix}</section>
<section id="charts"><h2>Statecharts of the actors that moved in the range, at its end</h2>${
    options.charts.length
      ? options.charts.join("\n")
      : `<p class="muted">No actor changed state in the range.</p>`
  }</section>
<div class="split">
<section id="timeline"><h2>Transitions in the range</h2>${options.timeline}</section>
<section id="messages"><h2>Messages between instances in the range</h2>${options.messages}</section>
</div>
</main>
</body>
</html>
`;
}
