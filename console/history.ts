/**
 * Time travel in the review console: the recorded history (GET /history, Redis server
 * clock) turned into what the live page shows — every instance's actors in the states
 * they were in at a moment, the transitions and messages of a range — and the
 * self-contained HTML report of a range that a postmortem attaches.
 *
 * Pure functions of validated entries; the route (api/core/console.ts) reads them.
 * @module
 */
import type { InstanceModel, TransitionView } from "./render.ts";
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

/** A recorded keyframe: every running actor of one instance and its state. */
export interface RecordedKeyframe {
  /** Kind. */
  k: "keyframe";
  /** Stream entry id. */
  entryId: string;
  /** Redis server clock (ms). */
  serverAt: number;
  /** Instance. */
  instance: string;
  /** Instance clock (ms). */
  at: number;
  /** Its actors. */
  actors: { path: string; machine?: string; state: unknown }[];
}

/** One recorded entry. */
export type Recorded = RecordedTransition | RecordedMessage | RecordedKeyframe;

/**
 * A record's place within its millisecond: its stream entry's sequence and its index in that
 * entry (one entry holds one flush of one instance's records).
 */
export type SubPosition = readonly [entry: number, index: number];

/** A moment and the range leading to it (server clock, ms). */
export interface Moment {
  /** The range's start. */
  from: number;
  /** The moment shown. */
  at: number;
  /**
   * When the moment is one recorded event: its place within the millisecond `at` (an
   * instance writes one flush of records as one stream entry, and several entries can share a
   * millisecond: stepping event by event has to look inside it). Absent: everything recorded
   * in `at`.
   */
  seq?: SubPosition | null;
}

/**
 * A record's place `<ms>-<n>.<i>` as three numbers (ids come from Redis, not from clients; a
 * bare stream entry id `<ms>-<n>` is its first record).
 */
function entryPosition(entryId: string): [number, number, number] {
  const dash = entryId.indexOf("-");
  const dot = entryId.indexOf(".", dash);
  return [
    Number(entryId.slice(0, dash)),
    Number(entryId.slice(dash + 1, dot < 0 ? undefined : dot)),
    dot < 0 ? 0 : Number(entryId.slice(dot + 1)),
  ];
}

/** A record's place within its millisecond (for step links). */
export function subPosition(entryId: string): SubPosition {
  const [, n, i] = entryPosition(entryId);
  return [n, i];
}

/** Orders two records by their places in the stream (negative: `a` first). */
export function comparePositions(a: { entryId: string }, b: { entryId: string }): number {
  const [am, an, ai] = entryPosition(a.entryId);
  const [bm, bn, bi] = entryPosition(b.entryId);
  return am - bm || an - bn || ai - bi;
}

/**
 * Where an entry is relative to the moment: negative before it, 0 the moment's own entry
 * (or any entry of its millisecond when it has no `seq`), positive after it.
 */
export function relativeTo(entry: { entryId: string }, moment: Moment): number {
  const [ms, n, i] = entryPosition(entry.entryId);
  if (ms !== moment.at) return ms - moment.at;
  return moment.seq === null || moment.seq === undefined
    ? 0
    : n - moment.seq[0] || i - moment.seq[1];
}

/**
 * Parses `seq` (`<n>.<i>`: a record's place within a millisecond; a bare `<n>` is the first
 * record of entry n); null when it is not one.
 */
export function parseSeq(text: string | undefined): SubPosition | null {
  const match = /^(\d{1,12})(?:\.(\d{1,6}))?$/.exec(text?.trim() ?? "");
  return match ? [Number(match[1]), Number(match[2] ?? 0)] : null;
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
 * entries newest first, on top of the instance's newest keyframe at or before `at` (from
 * `keyframes` or among the entries): an actor that has not moved since the keyframe is in the
 * keyframe's state, and transitions older than the keyframe no longer count. Instances in id
 * order. Transitions of the range `[from, at]` (oldest first) and the messages among them
 * become each instance's `transitions`, as the timeline and the sequence diagram read them.
 */
export function instancesAt(
  newestFirst: readonly Recorded[],
  range: readonly Recorded[],
  moment: Moment,
  keyframes: readonly Recorded[] = [],
): InstanceModel[] {
  const byId = new Map<string, InstanceModel>();
  const inst = (id: string) => {
    let model = byId.get(id);
    if (!model) byId.set(id, model = emptyInstance(id));
    return model;
  };
  const keyframeOf = new Map<string, RecordedKeyframe>();
  for (const k of [...keyframes, ...newestFirst]) {
    if (k.k !== "keyframe" || relativeTo(k, moment) > 0) continue;
    const known = keyframeOf.get(k.instance);
    if (!known || comparePositions(k, known) > 0) keyframeOf.set(k.instance, k);
  }
  const place = (
    model: InstanceModel,
    path: string,
    machine: string | undefined,
    state: unknown,
    serverAt: number,
  ) => {
    if (model.actors.some((a) => a.path === path)) return;
    model.actors.push({
      id: path.slice(path.lastIndexOf("/") + 1),
      path,
      machine: machine ?? null,
      status: "active",
      state,
      summary: {},
      updatedAt: serverAt,
      chart: null,
      chartNote: null,
      chartWidth: null,
    });
    if (path === "supervisor") model.supervisor = { state: formatState(state), reason: "" };
  };
  for (const entry of newestFirst) {
    if (entry.k !== "transition" || relativeTo(entry, moment) > 0) continue;
    const keyframe = keyframeOf.get(entry.instance);
    if (keyframe && comparePositions(entry, keyframe) < 0) continue;
    place(inst(entry.instance), entry.path, entry.machine, entry.state, entry.serverAt);
  }
  for (const keyframe of keyframeOf.values()) {
    const model = inst(keyframe.instance);
    for (const a of keyframe.actors) {
      place(model, a.path, a.machine, a.state, keyframe.serverAt);
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
    } else if (r.k === "message" && !caused.has(r.id)) {
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
  /** The event's place within `at`, or null for the whole millisecond. */
  seq: SubPosition | null;
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
  /** Events of the range shown when it held more (its oldest left out), else null. */
  truncated?: number | null;
}

/** The notice over a range whose oldest events were left out. */
export function truncationNotice(shown: number | null | undefined): string {
  return shown
    ? `<p class="unavailable" data-truncated="${
      e(shown)
    }"><strong>Range truncated</strong>: showing the last ${
      e(shown.toLocaleString("en"))
    } events (the oldest left out); pick a later start to see the rest.</p>`
    : "";
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
          ...(to.seq === null ? {} : { seq: `${to.seq[0]}.${to.seq[1]}` }),
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
  return `<div class="time-control" data-time-control>${error}${status}${
    truncationNotice(control.truncated)
  }
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
  /** Events of the range shown when it held more, else null. */
  truncated?: number | null;
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
<main>${truncationNotice(options.truncated)}
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
