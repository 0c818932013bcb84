/**
 * The review console: `GET /` renders the whole cluster as HTML (a matrix of every live
 * instance × its actors with status and state, filterable by concern and state; the
 * statechart of the actor picked in it with the current state highlighted; recent
 * transitions, messages between instances, sessions, backups, replication and key
 * metrics), and `/console/*` serves the page's script and stylesheet, the fragments the
 * script re-fetches, and `/console/events`, one server-sent event stream that merges every
 * instance's `/actors/stream`.
 *
 * The console is a client of the runtime's HTTP API: it reads this instance through
 * `app.request()` and the others through the URLs they advertise in `/cluster`, so the
 * browser talks to one origin only (no CORS, and instances behind a load balancer need not
 * be reachable from the reviewer's browser). Everything read from an instance is
 * validated; concern endpoints that are absent (404) are shown as unavailable.
 *
 * The console is an operator view: a person signs in (`/login`, api/login.ts) with an
 * operator or admin account, and only then sees it. Its own reads of this instance are
 * in-process requests with an operator-read principal no outside request can carry
 * (api/authz `internalEnv`); its reads of other instances carry a peer signature
 * (api/authz/peer.ts), good for that one GET on that one instance for a minute.
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import { streamSSE } from "hono/streaming";
import type { ActorView } from "../../actors/runtime/inspector.ts";
import { activeStatePaths } from "../../lib/charts.ts";
import { type Logger, silentLogger } from "../../lib/log.ts";
import {
  backupRows,
  dashboardErrors,
  dashboardSeries,
  keySamples,
  parsePrometheus,
  replicationNodes,
  sessionFigures,
} from "../../console/concerns.ts";
import { formatState } from "../../console/html.ts";
import {
  type ActorModel,
  type InstanceModel,
  matrixColumns,
  type MemberModel,
  type MetricSeries,
  type PageModel,
  type PageView,
  type PanelsModel,
  type Reading,
  renderChartPanel,
  renderInstance,
  renderMatrix,
  renderMessages,
  renderPage,
  renderPanels,
  renderTimeline,
  type ReplicationRow,
  type TransitionView,
} from "../../console/render.ts";
import { slug } from "../../console/html.ts";
import {
  instancesAt,
  type Moment,
  parseMoment,
  parseSeq,
  type Recorded,
  relativeTo,
  renderReport,
  renderTimeControl,
  type StepTarget,
  subPosition,
} from "../../console/history.ts";
import { HISTORY_LIMIT } from "./history.ts";
import { type ChartTemplate, highlightChart, parseChartSvg } from "../../console/svg.ts";
import {
  authorizerOf,
  declareRoute,
  internalEnv,
  PEER_HEADER,
  type PeerSigner,
  type Principal,
  serve,
} from "../authz/mod.ts";

/** What the console needs from the runtime. */
export interface ConsoleDeps {
  /** This instance's id (the member read through `app.request()`). */
  instanceId: string;
  /** Aborted on shutdown: open event streams end so the server can stop. */
  signal?: AbortSignal;
  /** Log for instances that cannot be read. */
  log?: Logger;
  /** Dashboard names to chart; default: the list `GET /dashboards` answers, if any. */
  dashboards?: string[];
  /** Clock (ms). */
  now?: () => number;
  /** Timeout of each read from another instance (ms, default 2500). */
  timeoutMs?: number;
  /** Signs reads of other instances; without it they answer 401 (shown as unavailable). */
  peer?: PeerSigner | null;
}

/** Actors drawn per instance; the rest are listed in a table. */
const MAX_DRAWN = 24;
/** Actors listed per instance beyond the drawn ones. */
const MAX_LISTED = 100;
/** Samples kept per metric series. */
const HISTORY = 60;
/** Minimum spacing of metric samples (ms): several viewers do not sample faster. */
const SAMPLE_EVERY_MS = 2000;
/** Events queued for one browser before it is told to resync instead. */
const OUTBOX_LIMIT = 500;
/** How often dashboards are re-read (ms). */
const DASHBOARDS_EVERY_MS = 30_000;
/** How often the event stream re-reads the member list (ms). */
const MEMBER_POLL_MS = 2000;
/** Actor views cached per member for browsers that join later. */
const MAX_CACHED_VIEWS = 500;
/** Transitions cached per member for browsers that join later. */
const CACHED_TRANSITIONS = 100;
/** How long one reading of the member list, and one page model, serve every request (ms). */
const CLUSTER_VIEW_TTL_MS = 1000;

const ASSETS: Record<string, { type: string }> = {
  "console.js": { type: "text/javascript; charset=utf-8" },
  "passkey.js": { type: "text/javascript; charset=utf-8" },
  "console.css": { type: "text/css; charset=utf-8" },
};

const PAGE_HEADERS: Record<string, string> = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "referrer-policy": "same-origin",
  // Defence in depth behind the escaping: nothing inline runs, nothing foreign loads.
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; " +
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; " +
    "frame-ancestors 'none'",
};

// ---------------------------------------------------------------------------------------
// What instances answer, validated

const memberSchema = z.object({
  id: z.string(),
  url: z.string().catch(""),
  roles: z.array(z.object({ role: z.string(), token: z.number() })).catch([]),
  heartbeatAgeMs: z.number().nullable().catch(null),
  startedAt: z.number().nullable().catch(null),
});

const clusterSchema = z.object({
  mode: z.string().catch("unknown"),
  members: z.array(memberSchema),
});

const viewSchema = z.object({
  id: z.string(),
  path: z.string(),
  machine: z.string().nullable().catch(null),
  status: z.string(),
  state: z.unknown(),
  summary: z.record(z.string(), z.unknown()).catch({}),
  updatedAt: z.number().catch(0),
});

const originSchema = z.object({
  id: z.string(),
  from: z.object({ instance: z.string(), actor: z.string() }),
  kind: z.string(),
  sentAt: z.number(),
});

const transitionSchema = z.object({
  seq: z.number(),
  path: z.string(),
  event: z.string(),
  state: z.unknown(),
  at: z.number(),
  origin: originSchema.optional().catch(undefined),
});

const actorsSchema = z.object({
  supervisor: z.object({ state: z.string(), reason: z.string() }).nullable().catch(null),
  transport: z.record(z.string(), z.number()).nullable().catch(null),
  actors: z.array(viewSchema),
  transitions: z.array(transitionSchema).catch([]),
});

const helloSchema = z.object({
  actors: z.array(viewSchema),
  transitions: z.array(transitionSchema).catch([]),
});

const snapshotSchema = z.object({
  view: viewSchema,
  transition: transitionSchema.nullable().catch(null),
});

const missedSchema = z.object({ missed: z.number().catch(0), actors: z.array(viewSchema) });

type Member = z.infer<typeof memberSchema>;

// ---------------------------------------------------------------------------------------
// Small helpers

function errorText(err: unknown): string {
  if (err instanceof DOMException && err.name === "AbortError") return "timed out";
  return err instanceof Error ? err.message : String(err);
}

/** Resolves after `ms`, or at once when `signal` aborts; leaves no timer behind. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Splits a server-sent event stream into `{ event, data }` messages. */
async function* sseMessages(
  reader: ReadableStreamDefaultReader<string>,
): AsyncGenerator<{ event: string; data: string }> {
  let buf = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n?/g, "\n");
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = "message";
      const data: string[] = [];
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      yield { event, data: data.join("\n") };
    }
  }
}

function unitOf(name: string): MetricSeries["unit"] {
  if (name.includes("_bytes")) return "bytes";
  if (/_seconds(_total)?$/.test(name)) return "seconds";
  if (/_ratio$/.test(name)) return "ratio";
  return "";
}

// ---------------------------------------------------------------------------------------
// The console

const html = { "text/html": { schema: z.string() } };
/** The console is for people with the operator or admin role (no machine scope). */
const operator = { caller: "operator" } as const;

/** What the page's query may say: the filters, and the actor whose chart is drawn. */
const pageQuery = z.object({
  instance: z.string().max(64).optional(),
  actor: z.string().max(200).optional(),
  concern: z.string().max(64).optional(),
  state: z.string().max(100).optional(),
  /** A recorded moment (epoch ms or ISO date, Redis server clock): time travel. */
  at: z.string().max(40).optional(),
  /** The start of the range leading to `at` (default a minute before). */
  from: z.string().max(40).optional(),
  /** One recorded event within the millisecond `at`: `<entry>.<index>` (step links). */
  seq: z.string().max(25).optional(),
});

/** A recorded entry as GET /history answers it (validated again: it crossed HTTP). */
const recordedSchema = z.discriminatedUnion("k", [
  z.object({
    k: z.literal("transition"),
    entryId: z.string(),
    serverAt: z.number(),
    instance: z.string(),
    at: z.number(),
    seq: z.number(),
    path: z.string(),
    event: z.string(),
    state: z.unknown(),
    cause: z.string().optional(),
    machine: z.string().optional(),
  }),
  z.object({
    k: z.literal("message"),
    entryId: z.string(),
    serverAt: z.number(),
    instance: z.string(),
    id: z.string(),
    kind: z.string(),
    from: z.object({ instance: z.string(), actor: z.string() }),
    to: z.object({ instance: z.string(), actor: z.string() }),
    event: z.string(),
    corr: z.string().optional(),
    sentAt: z.number(),
  }),
  z.object({
    k: z.literal("keyframe"),
    entryId: z.string(),
    serverAt: z.number(),
    instance: z.string(),
    at: z.number(),
    actors: z.array(
      z.object({ path: z.string(), machine: z.string().optional(), state: z.unknown() }),
    ),
  }),
]);
const historySchema = z.object({ entries: z.array(recordedSchema) });

/** The default range before a moment (ms). */
const DEFAULT_RANGE_MS = 60_000;

/** The review console's declarations. */
export const CONSOLE_ROUTES = {
  page: declareRoute({
    method: "get",
    path: "/",
    tags: ["console"],
    summary: "The review console (a person without a session is sent to /login)",
    access: operator,
    kind: "page",
    request: { query: pageQuery },
    responses: {
      200: { description: "The console", content: html },
      303: { description: "To /login" },
    },
  }),
  instances: declareRoute({
    method: "get",
    path: "/console/fragments/instances",
    tags: ["console"],
    summary: "Fragment: the instances × actors matrix, filtered",
    access: operator,
    request: { query: pageQuery },
    responses: { 200: { description: "HTML", content: html } },
  }),
  instance: declareRoute({
    method: "get",
    path: "/console/fragments/instance",
    tags: ["console"],
    summary: "Fragment: one instance's row of the matrix",
    access: operator,
    request: {
      query: z.object({
        id: z.string().max(64).optional(),
        columns: z.string().max(4000).optional(),
        concern: z.string().max(64).optional(),
        state: z.string().max(100).optional(),
      }),
    },
    responses: {
      200: { description: "HTML", content: html },
      404: {
        description: "No live instance by that id",
        content: { "application/json": { schema: z.looseObject({}) } },
      },
    },
  }),
  chart: declareRoute({
    method: "get",
    path: "/console/fragments/chart",
    tags: ["console"],
    summary: "Fragment: one actor's statechart with its current state",
    access: operator,
    request: { query: pageQuery },
    responses: { 200: { description: "HTML", content: html } },
  }),
  export: declareRoute({
    method: "get",
    path: "/console/export",
    tags: ["console"],
    summary: "A recorded range as a self-contained HTML report (charts, sequence, timeline)",
    access: operator,
    request: {
      query: z.object({ from: z.string().max(40).optional(), to: z.string().max(40).optional() }),
    },
    responses: {
      200: { description: "The report, as a download", content: html },
      400: {
        description: "No valid range",
        content: { "application/json": { schema: z.looseObject({}) } },
      },
    },
  }),
  panels: declareRoute({
    method: "get",
    path: "/console/fragments/panels",
    tags: ["console"],
    summary: "Fragment: sessions, backups, replication, dashboards and metrics",
    access: operator,
    responses: { 200: { description: "HTML", content: html } },
  }),
  messages: declareRoute({
    method: "get",
    path: "/console/fragments/messages",
    tags: ["console"],
    summary: "Fragment: messages between instances",
    access: operator,
    responses: { 200: { description: "HTML", content: html } },
  }),
  events: declareRoute({
    method: "get",
    path: "/console/events",
    tags: ["console"],
    summary: "Server-sent events merging every instance's /actors/stream",
    access: operator,
    kind: "events",
    responses: {
      200: {
        description: "An event stream",
        content: { "text/event-stream": { schema: z.string() } },
      },
    },
  }),
};

/** The console's script and stylesheet: public (the sign-in page uses the stylesheet). */
export const ASSET_ROUTES: Record<string, ReturnType<typeof assetRoute>> = Object.fromEntries(
  Object.entries(ASSETS).map(([name, { type }]) => [name, assetRoute(name, type)]),
);

function assetRoute(name: string, type: string) {
  return declareRoute({
    method: "get",
    path: `/console/${name}`,
    tags: ["console"],
    summary: `The console's ${name.endsWith(".js") ? "script" : "stylesheet"}`,
    access: { caller: "anonymous" },
    kind: "asset",
    responses: {
      200: { description: name, content: { [type.split(";")[0]]: { schema: z.string() } } },
    },
  });
}

/**
 * Adds the review console (`GET /`, `/console/*`). Call it before the server takes its
 * first request: Hono builds its router then.
 */
export function addConsoleRoutes(app: OpenAPIHono, deps: ConsoleDeps): void {
  const log = deps.log ?? silentLogger;
  const now = deps.now ?? Date.now;
  const timeoutMs = deps.timeoutMs ?? 2500;
  const shutdown = deps.signal ?? new AbortController().signal;
  const assets = new Map<string, Promise<string>>();
  // Charts per (instance process, machine): a process's machines do not change.
  const charts = new Map<string, Promise<ChartTemplate | null>>();
  // Metric and lag samples per series key, kept while someone watches.
  const history = new Map<string, { at: number; values: number[]; raw?: number; seen: number }>();
  let panelsCache: { at: number; key: string; value: Promise<PanelsModel> } | null = null;
  // Kept for a while only when it answered: an absent endpoint may appear (an upgrade).
  let dashboardsCache:
    | { at: number; ok: boolean; value: Promise<PanelsModel["dashboards"]> }
    | null = null;

  // Who the console's own reads are: an operator read, made in this process only. Every
  // route that serves them is for operators, so the console reads for the person viewing
  // it what that person may read.
  const self: Principal = { kind: "peer", instance: deps.instanceId };
  const selfEnv = internalEnv(self);

  /** A signed GET of `path` on another member (api/authz/peer.ts). */
  function peerFetch(member: Pick<Member, "id" | "url">, path: string, signal: AbortSignal) {
    const url = new URL(path, member.url);
    const headers: Record<string, string> = {};
    if (deps.peer) {
      headers[PEER_HEADER] = deps.peer.sign("GET", url.pathname + url.search, member.id);
    }
    return fetch(url, { signal, headers });
  }

  /** GETs `path` from a member: this instance in-process, the others over HTTP. */
  async function get(
    member: Pick<Member, "id" | "url">,
    path: string,
    options: { ms?: number; signal?: AbortSignal } = {},
  ): Promise<Response> {
    if (member.id === deps.instanceId) return await app.request(path, {}, selfEnv);
    if (!member.url) throw new Error("it advertises no URL");
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), options.ms ?? timeoutMs);
    try {
      const res = await peerFetch(member, path, ctl.signal);
      // Buffer the body under the same deadline.
      const body = await res.arrayBuffer();
      return new Response(body, { status: res.status, headers: res.headers });
    } finally {
      clearTimeout(timer);
    }
  }

  /** Reads a JSON endpoint of a member; 404 means the member does not serve it. */
  async function readJson(
    member: Pick<Member, "id" | "url">,
    path: string,
  ): Promise<
    { ok: true; body: unknown } | {
      ok: false;
      missing: boolean;
      declined?: boolean;
      reason: string;
    }
  > {
    try {
      const res = await get(member, path);
      if (res.status === 404) {
        await res.body?.cancel();
        return { ok: false, missing: true, reason: "not served (404)" };
      }
      if (!res.ok) {
        // The runtime's errors are `{ error: { code, message } }`: the message says why.
        const body = await res.text().catch(() => "");
        let message: unknown;
        try {
          message = JSON.parse(body)?.error?.message;
        } catch { /* not JSON: the status says enough */ }
        // 503 with a reason is a concern saying it cannot work here (embedded mode, say).
        if (res.status === 503 && typeof message === "string") {
          return { ok: false, missing: false, declined: true, reason: message };
        }
        const reason = `status ${res.status}${typeof message === "string" ? `: ${message}` : ""}`;
        return { ok: false, missing: false, reason };
      }
      const text = await res.text();
      try {
        return { ok: true, body: JSON.parse(text) };
      } catch {
        return { ok: false, missing: false, reason: "the answer is not JSON" };
      }
    } catch (err) {
      return { ok: false, missing: false, reason: errorText(err) };
    }
  }

  // Every fragment, page and the hub read the member list: one reading serves them all for
  // a moment, so a burst of requests costs one GET /cluster.
  let membersCache: { at: number; value: Promise<{ mode: string; members: Member[] }> } | null =
    null;
  function listMembers(): Promise<{ mode: string; members: Member[] }> {
    if (membersCache && now() - membersCache.at < CLUSTER_VIEW_TTL_MS) return membersCache.value;
    const entry = { at: now(), value: readMembers() };
    membersCache = entry;
    entry.value.catch(() => {
      if (membersCache === entry) membersCache = null;
    });
    return entry.value;
  }

  async function readMembers(): Promise<{ mode: string; members: Member[] }> {
    const res = await app.request("/cluster", {}, selfEnv);
    if (!res.ok) {
      await res.body?.cancel();
      throw new Error(`GET /cluster answered ${res.status}`);
    }
    const parsed = clusterSchema.safeParse(await res.json());
    if (!parsed.success) throw new Error("GET /cluster answered an unexpected shape");
    const members = parsed.data.members;
    // This instance first, then the others by id: a stable order for the page.
    members.sort((a, b) =>
      a.id === deps.instanceId ? -1 : b.id === deps.instanceId ? 1 : a.id.localeCompare(b.id)
    );
    return { mode: parsed.data.mode, members };
  }

  function chartTemplate(member: Member, machine: string): Promise<ChartTemplate | null> {
    const key = `${member.id}\n${member.url}\n${member.startedAt}\n${machine}`;
    let hit = charts.get(key);
    if (!hit) {
      hit = (async () => {
        const res = await get(member, `/charts/${encodeURIComponent(machine)}.svg`, {
          ms: timeoutMs * 2,
        });
        if (res.status === 404) {
          await res.body?.cancel();
          return null;
        }
        if (!res.ok) {
          await res.body?.cancel();
          throw new Error(`status ${res.status}`);
        }
        return parseChartSvg(await res.text());
      })();
      charts.set(key, hit);
      // Failures are retried on the next render; "no such chart" is remembered.
      hit.catch(() => charts.delete(key));
      while (charts.size > 256) charts.delete(charts.keys().next().value!);
    }
    return hit;
  }

  async function actorModel(member: Member, view: ActorView): Promise<ActorModel> {
    const label = `Statechart of ${view.id}, current state ${formatState(view.state)}`;
    if (!view.machine) {
      return {
        ...view,
        chart: null,
        chartNote: "Not a state machine: no chart.",
        chartWidth: null,
      };
    }
    try {
      const template = await chartTemplate(member, view.machine);
      if (!template) {
        return {
          ...view,
          chart: null,
          chartNote: `No chart: ${member.id} serves none for machine ${view.machine}.`,
          chartWidth: null,
        };
      }
      const active = view.status === "active" || view.status === "done"
        ? activeStatePaths(view.state)
        : [];
      return {
        ...view,
        chart: highlightChart(template, active, { label }),
        chartNote: null,
        chartWidth: template.width,
      };
    } catch (err) {
      return {
        ...view,
        chart: null,
        chartNote: `Chart unavailable: ${errorText(err)}.`,
        chartWidth: null,
      };
    }
  }

  function memberModel(m: Member): MemberModel {
    return { id: m.id, url: m.url, roles: m.roles, heartbeatAgeMs: m.heartbeatAgeMs };
  }

  async function instanceModel(member: Member): Promise<InstanceModel> {
    const base: InstanceModel = {
      member: memberModel(member),
      self: member.id === deps.instanceId,
      error: null,
      supervisor: null,
      transport: null,
      actors: [],
      listed: [],
      transitions: [],
    };
    const read = await readJson(member, "/actors");
    if (!read.ok) {
      log.warn("console cannot read an instance", { instance: member.id, reason: read.reason });
      return { ...base, error: read.reason };
    }
    const parsed = actorsSchema.safeParse(read.body);
    if (!parsed.success) return { ...base, error: "GET /actors answered an unexpected shape" };
    const depth = (v: ActorView) => v.path.split("/").length;
    const views = parsed.data.actors as ActorView[];
    const ordered = [...views].sort((a, b) => depth(a) - depth(b));
    const drawable = ordered.filter((v) => depth(v) <= 2 || v.status === "active");
    const drawn = drawable.slice(0, MAX_DRAWN);
    const listed = views.filter((v) => !drawn.includes(v))
      .sort((a, b) => b.updatedAt - a.updatedAt)
      .slice(0, MAX_LISTED);
    return {
      ...base,
      supervisor: parsed.data.supervisor,
      transport: parsed.data.transport,
      // Charts are drawn one at a time, for the actor picked in the matrix (chartSelection).
      actors: drawn.map((v) => ({ ...v, chart: null, chartNote: null, chartWidth: null })),
      listed,
      transitions: parsed.data.transitions.map((t) => ({ ...t, instance: member.id })),
    };
  }

  /** Appends a sample to a series unless the last one is too recent; returns the values. */
  function sample(key: string, value: number, options: { rate?: boolean } = {}): number[] {
    const at = now();
    let h = history.get(key);
    if (!h) {
      h = { at: 0, values: [], seen: at };
      history.set(key, h);
    }
    h.seen = at;
    if (at - h.at < SAMPLE_EVERY_MS) return h.values;
    if (options.rate) {
      // A counter becomes a per-second rate; a reset (value went down) starts over.
      if (h.raw !== undefined && h.at > 0 && value >= h.raw) {
        h.values.push((value - h.raw) / ((at - h.at) / 1000));
      }
      h.raw = value;
    } else {
      h.values.push(value);
    }
    h.at = at;
    if (h.values.length > HISTORY) h.values.splice(0, h.values.length - HISTORY);
    return h.values;
  }

  function forgetStale(): void {
    const cutoff = now() - 10 * 60_000;
    for (const [key, h] of history) if (h.seen < cutoff) history.delete(key);
  }

  async function sessionsReading(
    members: Member[],
    instances?: InstanceModel[],
  ): Promise<PanelsModel["sessions"]> {
    const source = "/sessions/stats";
    const read = await readJson({ id: deps.instanceId, url: "" }, source);
    if (read.ok) {
      return { ok: true, source, data: { figures: sessionFigures(read.body), note: null } };
    }
    if (!read.missing) {
      return { ok: false, source, missing: false, declined: read.declined, reason: read.reason };
    }
    // No statistics endpoint: fall back to the sessions actors' summaries, and say so.
    const views: ActorView[] = instances
      ? instances.flatMap((i) => [...i.actors, ...i.listed])
      : (await Promise.all(members.map(async (m) => {
        const r = await readJson(m, "/actors");
        const parsed = r.ok ? actorsSchema.safeParse(r.body) : null;
        return parsed?.success ? parsed.data.actors as ActorView[] : [];
      }))).flat();
    const summaries = views.filter((a) => a.id === "sessions" && a.path.split("/").length === 2);
    if (summaries.length) {
      const sums = new Map<string, number>();
      for (const a of summaries) {
        for (const [k, v] of Object.entries(a.summary)) {
          if (typeof v === "number" && Number.isFinite(v)) sums.set(k, (sums.get(k) ?? 0) + v);
        }
      }
      const figures = [...sums].map(([label, value]) => ({
        label: label.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase(),
        value,
      }));
      const counted = [...sums.keys()].some((k) => /sessions?(count)?$|^(active|open)/i.test(k));
      return {
        ok: true,
        source: "/actors (sessions actor summary)",
        data: {
          figures,
          note: `This instance serves no GET ${source}; these are the sessions actors' summary ` +
            `figures, summed over ${summaries.length} instance${summaries.length === 1 ? "" : "s"}${
              counted ? "" : ", and they include no count of open sessions"
            }.`,
        },
      };
    }
    return { ok: false, source, missing: true, reason: read.reason };
  }

  async function replicationReading(): Promise<PanelsModel["replication"]> {
    const source = "/replication";
    const read = await readJson({ id: deps.instanceId, url: "" }, source);
    if (!read.ok) {
      return {
        ok: false,
        source,
        missing: read.missing,
        declined: read.declined,
        reason: read.reason,
      };
    }
    const rows: ReplicationRow[] = replicationNodes(read.body).map((n) => {
      const value = n.lagSeconds ?? n.lagBytes;
      return {
        ...n,
        history: value === null ? [] : [...sample(`replication\n${n.name}`, value)],
      };
    });
    return { ok: true, source, data: rows };
  }

  async function backupsReading(): Promise<PanelsModel["backups"]> {
    const source = "/backups";
    const read = await readJson({ id: deps.instanceId, url: "" }, source);
    if (!read.ok) {
      return {
        ok: false,
        source,
        missing: read.missing,
        declined: read.declined,
        reason: read.reason,
      };
    }
    return { ok: true, source, data: backupRows(read.body) };
  }

  async function metricsReading(member: Member): Promise<Reading<MetricSeries[]>> {
    const source = "/metrics";
    try {
      const res = await get(member, source);
      if (!res.ok) {
        await res.body?.cancel();
        return res.status === 404
          ? { ok: false, source, missing: true, reason: "not served (404)" }
          : { ok: false, source, missing: false, reason: `status ${res.status}` };
      }
      const { samples, types } = parsePrometheus(await res.text());
      const series = keySamples(samples, types).map((s) => {
        const rate = types.get(s.name) === "counter" || s.name.endsWith("_total");
        return {
          name: s.name,
          labels: s.labels,
          unit: unitOf(s.name),
          rate,
          values: [...sample(`metric\n${member.id}\n${s.name}${s.labels}`, s.value, { rate })],
        };
      });
      return { ok: true, source, data: series };
    } catch (err) {
      return { ok: false, source, missing: false, reason: errorText(err) };
    }
  }

  async function dashboardsReading(): Promise<PanelsModel["dashboards"]> {
    const self = { id: deps.instanceId, url: "" };
    const source = "/dashboards";
    let names: { name: string; title: string }[];
    if (deps.dashboards) names = deps.dashboards.map((name) => ({ name, title: name }));
    else {
      const list = await readJson(self, source);
      if (!list.ok) {
        return {
          ok: false,
          source,
          missing: list.missing,
          declined: list.declined,
          reason: list.reason,
        };
      }
      const body = list.body as { dashboards?: unknown };
      const raw = Array.isArray(list.body) ? list.body : body?.dashboards;
      names = (Array.isArray(raw) ? raw : []).flatMap((d) => {
        const name = typeof d === "string" ? d : (d as { name?: unknown })?.name;
        const title = (d as { title?: unknown })?.title;
        return typeof name === "string"
          ? [{ name, title: typeof title === "string" ? title : name }]
          : [];
      });
    }
    const out = await Promise.all(
      // The plan's seven dashboards and streams: each linked, each read.
      names.slice(0, 12).map(async ({ name, title }) => {
        const read = await readJson(self, `/dashboards/${encodeURIComponent(name)}`);
        return read.ok
          ? { name, title, series: dashboardSeries(read.body), errors: dashboardErrors(read.body) }
          : { name, title, series: [], errors: [read.reason] };
      }),
    );
    return { ok: true, source, data: out };
  }

  function panels(members: Member[], instances?: InstanceModel[]): Promise<PanelsModel> {
    // Several fragments and viewers within a moment share one reading.
    const key = members.map((m) => m.id).join("\n");
    if (panelsCache && panelsCache.key === key && now() - panelsCache.at < SAMPLE_EVERY_MS) {
      return panelsCache.value;
    }
    forgetStale();
    // Dashboards query the metrics store over an hour in minute buckets: read them seldom.
    if (
      !dashboardsCache || !dashboardsCache.ok || now() - dashboardsCache.at >= DASHBOARDS_EVERY_MS
    ) {
      const value = dashboardsReading();
      const entry = { at: now(), value, ok: false };
      value.then((r) => entry.ok = r.ok);
      dashboardsCache = entry;
    }
    const dashboards = dashboardsCache.value;
    const value = (async () => {
      const [sessions, backups, replication, metrics] = await Promise.all([
        sessionsReading(members, instances),
        backupsReading(),
        replicationReading(),
        Promise.all(
          members.slice(0, 8).map(async (m) => ({
            instance: m.id,
            reading: await metricsReading(m),
          })),
        ),
      ]);
      return { sessions, backups, replication, dashboards: await dashboards, metrics };
    })();
    panelsCache = { at: now(), key, value };
    return value;
  }

  // `GET /` reads every member (its actors, charts, metrics): requests within a moment share
  // one reading instead of fanning out to every member each.
  let pageCache: { at: number; value: Promise<PageModel> } | null = null;
  function pageModel(): Promise<PageModel> {
    if (pageCache && now() - pageCache.at < CLUSTER_VIEW_TTL_MS) return pageCache.value;
    const entry = { at: now(), value: readPageModel() };
    pageCache = entry;
    entry.value.catch(() => {
      if (pageCache === entry) pageCache = null;
    });
    return entry.value;
  }

  async function readPageModel(): Promise<PageModel> {
    const generatedAt = now();
    let mode = "unknown";
    let members: Member[] = [];
    let clusterError: string | null = null;
    try {
      ({ mode, members } = await listMembers());
    } catch (err) {
      // Without the member list (Redis down, say) this instance can still show itself.
      clusterError = errorText(err);
      members = [{
        id: deps.instanceId,
        url: "",
        roles: [],
        heartbeatAgeMs: null,
        startedAt: null,
      }];
    }
    const instances = await Promise.all(members.map(instanceModel));
    return {
      instance: deps.instanceId,
      mode,
      generatedAt,
      clusterError,
      instances,
      panels: await panels(members, instances),
    };
  }

  async function asset(name: string): Promise<string> {
    let hit = assets.get(name);
    if (!hit) {
      hit = Deno.readTextFile(new URL(`../../console/${name}`, import.meta.url));
      assets.set(name, hit);
      hit.catch(() => assets.delete(name));
    }
    return await hit;
  }

  function html(c: Context, body: string): Response {
    for (const [k, v] of Object.entries(PAGE_HEADERS)) c.header(k, v);
    return c.body(body);
  }

  /** The person viewing: who, and whether the console is theirs to see. */
  async function viewer(c: Context): Promise<{ name: string; role: string } | null> {
    const p = c.get("principal");
    if (p?.kind !== "session") return null;
    const authority = await authorizerOf(c).authority(p);
    return authority ? { name: authority.username, role: authority.role } : null;
  }

  /** The query's view of the page: filters, and the chart of the actor picked (if any). */
  async function pageView(
    model: PageModel,
    query: z.infer<typeof pageQuery>,
    options: { history?: boolean } = {},
  ): Promise<PageView> {
    const filter = { concern: query.concern ?? "", state: query.state ?? "" };
    if (!query.instance || !query.actor) return { filter, chart: null };
    const inst = model.instances.find((i) => i.member.id === query.instance);
    const view = inst?.actors.find((a) => a.path === query.actor) ??
      inst?.listed.find((a) => a.path === query.actor);
    if (!inst || !view) {
      return {
        filter,
        chart: null,
        chartNote: `No actor ${query.actor} on a live instance named ${query.instance}.`,
      };
    }
    // A recorded moment is drawn with this instance's charts: the machines are the code's.
    const member = options.history
      ? selfMember
      : (await listMembers().catch(() => ({ members: [] as Member[] }))).members
        .find((m) => m.id === inst.member.id) ??
        { ...inst.member, startedAt: null };
    return { filter, chart: { instance: inst.member.id, actor: await actorModel(member, view) } };
  }

  const selfMember: Member = {
    id: deps.instanceId,
    url: "",
    roles: [],
    heartbeatAgeMs: null,
    startedAt: null,
  };

  /** Reads the recorded history from this instance's GET /history. */
  async function recorded(query: Record<string, string>): Promise<Recorded[]> {
    const read = await readJson(selfMember, `/history?${new URLSearchParams(query)}`);
    if (!read.ok) throw new Error(read.reason);
    const parsed = historySchema.safeParse(read.body);
    if (!parsed.success) throw new Error("GET /history answered an unexpected shape");
    return parsed.data.entries as Recorded[];
  }

  /**
   * The cluster at a recorded moment: every instance's states (from its newest keyframe at or
   * before the moment, and the newest records up to it), the range's events — the newest
   * HISTORY_LIMIT of them, read newest first so that a long range loses its oldest events,
   * not those nearest the moment; `truncated` then says how many are shown.
   */
  async function momentModel(moment: Moment, concern: string) {
    const [newest, after, keyframes] = await Promise.all([
      recorded({ to: String(moment.at), limit: String(HISTORY_LIMIT), order: "desc" }),
      recorded({ from: String(moment.at), limit: "2000" }),
      // Before the moment's millisecond: a keyframe within it may lie after the moment's `seq`
      // (the newest records above hold the ones in it).
      recorded({ to: String(Math.max(0, moment.at - 1)), keyframes: "1" }),
    ]);
    // The range is the newest records up to the moment that are not before `from`: when they
    // reach back past `from` that is the whole range, else the range's newest HISTORY_LIMIT.
    const range = newest.filter((r) => r.serverAt >= moment.from).reverse();
    // Stepping goes event by event (record by record: one instance's flush shares a stream
    // entry, and entries share a millisecond), over the concern filtered on when there is one.
    const matches = (r: Recorded) =>
      r.k === "transition" &&
      (!concern || r.machine === concern || r.path.slice(r.path.lastIndexOf("/") + 1) === concern);
    const target = (r: Recorded | undefined): StepTarget | null =>
      r ? { at: r.serverAt, seq: subPosition(r.entryId) } : null;
    // Back: from one event, to the matching event before it; from a whole millisecond, to the
    // last matching event before that millisecond.
    const prev = target(
      moment.seq === null || moment.seq === undefined
        ? newest.find((r) => r.serverAt < moment.at && matches(r))
        : newest.find((r) => relativeTo(r, moment) < 0 && matches(r)),
    );
    const next = target(after.find((r) => relativeTo(r, moment) > 0 && matches(r)));
    return {
      instances: instancesAt(newest, range, moment, keyframes),
      prev,
      next,
      range,
      truncated: range.length >= HISTORY_LIMIT ? range.length : null,
    };
  }

  serve(app, CONSOLE_ROUTES.page, async (c) => {
    const query = c.req.valid("query");
    const model = await pageModel();
    const keep: Record<string, string> = {};
    for (const k of ["concern", "state", "instance", "actor"] as const) {
      if (query[k]) keep[k] = query[k]!;
    }
    const at = parseMoment(query.at);
    if (query.at && at === null) {
      const view = await pageView(model, query);
      view.timeControl = renderTimeControl({
        moment: null,
        prev: null,
        next: null,
        keep,
        error: `${query.at} is not a moment: give epoch milliseconds or an ISO date`,
      });
      return html(c, renderPage({ ...model, viewer: await viewer(c) }, view));
    }
    if (at === null) {
      const view = await pageView(model, query);
      view.timeControl = renderTimeControl({ moment: null, prev: null, next: null, keep });
      return html(c, renderPage({ ...model, viewer: await viewer(c) }, view));
    }
    const from = Math.min(parseMoment(query.from) ?? at - DEFAULT_RANGE_MS, at);
    const moment: Moment = { from, at, seq: parseSeq(query.seq) };
    try {
      const past = await momentModel(moment, query.concern ?? "");
      const pastModel: PageModel = { ...model, instances: past.instances, clusterError: null };
      const view = await pageView(pastModel, query, { history: true });
      view.linkParams = {
        from: String(from),
        at: String(at),
        ...(moment.seq === null ? {} : { seq: String(moment.seq) }),
      };
      view.history = true;
      view.timeControl = renderTimeControl({
        moment,
        prev: past.prev,
        next: past.next,
        keep,
        truncated: past.truncated,
      });
      return html(c, renderPage({ ...pastModel, viewer: await viewer(c) }, view));
    } catch (err) {
      const view = await pageView(model, query);
      view.timeControl = renderTimeControl({
        moment: null,
        prev: null,
        next: null,
        keep,
        error: errorText(err),
      });
      return html(c, renderPage({ ...model, viewer: await viewer(c) }, view));
    }
  });

  serve(app, CONSOLE_ROUTES.export, async (c) => {
    const query = c.req.valid("query");
    const to = parseMoment(query.to);
    if (to === null) {
      return c.json({
        error: { code: "INVALID_RANGE", message: "to must be epoch milliseconds or an ISO date" },
      }, 400);
    }
    const from = Math.min(parseMoment(query.from) ?? to - DEFAULT_RANGE_MS, to);
    const moment = { from, at: to };
    const past = await momentModel(moment, "");
    // Charts of the actors that moved in the range (at most MAX_DRAWN), at its end; those
    // that moved least first: periodic ones (heartbeats, lease renewals) are seldom the story.
    const moves = new Map<string, number>();
    for (const r of past.range) {
      if (r.k !== "transition") continue;
      const key = `${r.instance}\n${r.path}`;
      moves.set(key, (moves.get(key) ?? 0) + 1);
    }
    const picked = past.instances.flatMap((inst) =>
      inst.actors.map((actor) => ({
        inst,
        actor,
        n: moves.get(`${inst.member.id}\n${actor.path}`),
      }))
    ).filter((x) => x.n !== undefined)
      .sort((a, b) => a.n! - b.n!)
      .slice(0, MAX_DRAWN);
    const charts: string[] = [];
    const drawn = new Set<string>();
    for (const { inst, actor } of picked) {
      charts.push(
        renderChartPanel({ instance: inst.member.id, actor: await actorModel(selfMember, actor) }),
      );
      drawn.add(`${inst.member.id}\n${actor.path}`);
    }
    const body = renderReport({
      moment,
      truncated: past.truncated,
      css: await asset("console.css"),
      matrix: renderMatrix({ instances: past.instances, clusterError: null }, {
        noForm: true,
        cellHref: (instance, path) =>
          drawn.has(`${instance}\n${path}`) ? `#chart-${slug(`${instance}\n${path}`)}` : "#charts",
      }),
      charts,
      timeline: renderTimeline(past.instances, 500),
      messages: renderMessages(past.instances, 200, { recorded: true }),
      generatedAt: now(),
      instance: deps.instanceId,
    });
    for (const [k, v] of Object.entries(PAGE_HEADERS)) c.header(k, v);
    // The report carries its stylesheet inline (it opens from disk); still nothing runs.
    c.header(
      "content-security-policy",
      "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; " +
        "form-action 'none'; frame-ancestors 'none'",
    );
    const name = `rootstream-${new Date(from).toISOString()}-${new Date(to).toISOString()}.html`
      .replaceAll(":", "-");
    c.header("content-disposition", `attachment; filename="${name}"`);
    return c.body(body);
  });

  serve(app, CONSOLE_ROUTES.chart, async (c) => {
    const view = await pageView(await pageModel(), c.req.valid("query"));
    return html(c, renderChartPanel(view.chart, view.chartNote));
  });

  for (const [name, route] of Object.entries(ASSET_ROUTES)) {
    serve(app, route, async (c) => {
      c.header("content-type", ASSETS[name].type);
      c.header("cache-control", "no-cache");
      c.header("x-content-type-options", "nosniff");
      return c.body(await asset(name));
    });
  }

  serve(app, CONSOLE_ROUTES.instances, async (c) => {
    const model = await pageModel();
    const query = c.req.valid("query");
    const filter = { concern: query.concern ?? "", state: query.state ?? "" };
    const selected = query.instance && query.actor
      ? { instance: query.instance, path: query.actor }
      : null;
    return html(c, renderMatrix(model, { filter, selected }));
  });

  serve(app, CONSOLE_ROUTES.instance, async (c) => {
    const query = c.req.valid("query");
    const id = query.id ?? "";
    const { members } = await listMembers();
    const member = members.find((m) => m.id === id);
    if (!member) {
      return c.json({
        error: { code: "NOT_FOUND", message: `No live instance named ${id}` },
      }, 404);
    }
    const inst = await instanceModel(member);
    // The page's columns, so the row lines up; an actor outside them marks the row
    // (data-new-columns) and the page re-reads the whole matrix.
    const columns = (query.columns ?? "").split(",").filter(Boolean).slice(0, 200).map((path) => {
      const last = path.slice(path.lastIndexOf("/") + 1);
      const machine = inst.actors.find((a) => a.path === path)?.machine;
      return { path, concern: machine ?? last, label: last };
    });
    const filter = { concern: query.concern ?? "", state: query.state ?? "" };
    return html(
      c,
      renderInstance(inst, columns.length ? columns : matrixColumns([inst]), { filter }),
    );
  });

  serve(app, CONSOLE_ROUTES.panels, async (c) => {
    const { members } = await listMembers();
    return html(c, renderPanels(await panels(members)));
  });

  serve(app, CONSOLE_ROUTES.messages, async (c) => {
    const { members } = await listMembers();
    // Messages need transitions only: no charts.
    const instances: InstanceModel[] = await Promise.all(members.map(async (m) => {
      const read = await readJson(m, "/actors");
      const parsed = read.ok ? actorsSchema.safeParse(read.body) : null;
      const transitions: TransitionView[] = parsed?.success
        ? parsed.data.transitions.map((t) => ({ ...t, instance: m.id }))
        : [];
      return {
        member: memberModel(m),
        self: m.id === deps.instanceId,
        error: null,
        supervisor: null,
        transport: null,
        actors: [],
        listed: [],
        transitions,
      };
    }));
    return html(c, renderMessages(instances));
  });

  // ---- One feed for every browser ----------------------------------------------------
  // Each browser on /console/events would otherwise open a stream to every member and poll
  // the member list itself: N viewers x M members streams. Instead one hub, running while
  // anyone watches, follows each member once and polls the list once; each browser gets the
  // hub's cached view of a member when it joins, then the same events as everyone.

  type Listener = (event: string, data: unknown) => void;
  interface Upstream {
    member: Member;
    stop(): void;
    done: Promise<void>;
    /** The member's actors as last seen (hello, then each snapshot), for late joiners. */
    views: Map<string, z.infer<typeof viewSchema>> | null;
    transitions: z.infer<typeof transitionSchema>[];
    status: { connected: boolean; reason?: string } | null;
  }
  interface Hub {
    listeners: Set<Listener>;
    upstreams: Map<string, Upstream>;
    cluster: unknown;
    stop(): Promise<void>;
  }
  let hub: Hub | null = null;

  function startHub(): Hub {
    const ctl = new AbortController();
    const stopOnShutdown = () => ctl.abort();
    shutdown.addEventListener("abort", stopOnShutdown, { once: true });
    if (shutdown.aborted) ctl.abort();
    const listeners = new Set<Listener>();
    const upstreams = new Map<string, Upstream>();
    const self: Hub = { listeners, upstreams, cluster: null, stop };

    function broadcast(event: string, data: unknown): void {
      for (const fn of [...listeners]) {
        try {
          fn(event, data);
        } catch { /* one browser's failure is not the others' */ }
      }
    }

    function remember(u: Upstream, view: z.infer<typeof viewSchema>): void {
      if (!u.views) return;
      u.views.delete(view.path);
      u.views.set(view.path, view);
      // Stopped actors (every login attempt is one) go first once the cache is full.
      if (u.views.size > MAX_CACHED_VIEWS) {
        for (const [path, v] of u.views) {
          if (u.views.size <= MAX_CACHED_VIEWS) break;
          if (v.status !== "active") u.views.delete(path);
        }
      }
    }

    function follow(member: Member): void {
      const local = new AbortController();
      let reader: ReadableStreamDefaultReader<string> | null = null;
      const end = () => {
        local.abort();
        reader?.cancel().catch(() => {});
      };
      ctl.signal.addEventListener("abort", end, { once: true });
      const u: Upstream = {
        member,
        stop: end,
        done: Promise.resolve(),
        views: null,
        transitions: [],
        status: null,
      };
      const status = (s: { connected: boolean; reason?: string }) => {
        u.status = s;
        broadcast("upstream", { instance: member.id, ...s });
      };
      u.done = (async () => {
        let backoff = 500;
        while (!local.signal.aborted) {
          try {
            const res = member.id === deps.instanceId
              ? await app.request("/actors/stream", {}, selfEnv)
              : member.url
              ? await peerFetch(member, "/actors/stream", local.signal)
              : null;
            if (!res) throw new Error("it advertises no URL");
            if (!res.ok || !res.body) {
              await res.body?.cancel();
              throw new Error(`status ${res.status}`);
            }
            reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
            if (local.signal.aborted) await reader.cancel();
            status({ connected: true });
            backoff = 500;
            for await (const msg of sseMessages(reader)) {
              let data: unknown;
              try {
                data = JSON.parse(msg.data);
              } catch {
                continue;
              }
              if (msg.event === "hello") {
                const p = helloSchema.safeParse(data);
                if (!p.success) continue;
                u.views = new Map();
                for (const v of p.data.actors) remember(u, v);
                u.transitions = p.data.transitions.slice(-CACHED_TRANSITIONS);
                broadcast("hello", { instance: member.id, ...p.data });
              } else if (msg.event === "snapshot") {
                const p = snapshotSchema.safeParse(data);
                if (!p.success) continue;
                remember(u, p.data.view);
                if (p.data.transition) {
                  u.transitions.push(p.data.transition);
                  if (u.transitions.length > CACHED_TRANSITIONS) u.transitions.shift();
                }
                broadcast("snapshot", { instance: member.id, ...p.data });
              } else if (msg.event === "missed") {
                const p = missedSchema.safeParse(data);
                if (!p.success) continue;
                u.views = new Map();
                for (const v of p.data.actors) remember(u, v);
                broadcast("missed", { instance: member.id, ...p.data });
              }
            }
            reader = null;
            if (!local.signal.aborted) throw new Error("its event stream ended");
          } catch (err) {
            reader = null;
            if (local.signal.aborted) break;
            status({ connected: false, reason: errorText(err) });
            await sleep(backoff, local.signal);
            backoff = Math.min(backoff * 2, 10_000);
          }
        }
        ctl.signal.removeEventListener("abort", end);
      })();
      upstreams.set(member.id, u);
    }

    let known = "";
    async function syncMembers(): Promise<void> {
      let members: Member[];
      try {
        ({ members } = await listMembers());
      } catch (err) {
        self.cluster = { error: errorText(err), members: null };
        broadcast("cluster", self.cluster);
        return;
      }
      const ids = new Set(members.map((m) => m.id));
      for (const [id, u] of upstreams) {
        const now = members.find((m) => m.id === id);
        if (!ids.has(id) || now?.url !== u.member.url || now?.startedAt !== u.member.startedAt) {
          u.stop();
          upstreams.delete(id);
        }
      }
      for (const m of members) if (!upstreams.has(m.id)) follow(m);
      const summary = JSON.stringify(members.map((m) => [m.id, m.url, m.startedAt, m.roles]));
      if (summary !== known) {
        known = summary;
        self.cluster = { members: members.map(memberModel) };
        broadcast("cluster", self.cluster);
      }
    }

    const loop = (async () => {
      try {
        await syncMembers();
        while (!ctl.signal.aborted) {
          await sleep(MEMBER_POLL_MS, ctl.signal);
          if (!ctl.signal.aborted) await syncMembers();
        }
      } finally {
        for (const u of upstreams.values()) u.stop();
        await Promise.all([...upstreams.values()].map((u) => u.done));
        shutdown.removeEventListener("abort", stopOnShutdown);
      }
    })();

    async function stop(): Promise<void> {
      ctl.abort();
      await loop;
    }
    return self;
  }

  /** Joins the hub (starting it); the returned function leaves (stopping it when last). */
  function join(listener: Listener): () => Promise<void> {
    if (!hub) hub = startHub();
    const mine = hub;
    // What a late joiner needs to start complete: the member list and each member's view.
    if (mine.cluster) listener("cluster", mine.cluster);
    for (const u of mine.upstreams.values()) {
      if (u.status) listener("upstream", { instance: u.member.id, ...u.status });
      if (u.views) {
        listener("hello", {
          instance: u.member.id,
          actors: [...u.views.values()],
          transitions: [...u.transitions],
        });
      }
    }
    mine.listeners.add(listener);
    return async () => {
      mine.listeners.delete(listener);
      if (mine.listeners.size === 0) {
        if (hub === mine) hub = null;
        await mine.stop();
      }
    };
  }

  serve(app, CONSOLE_ROUTES.events, (c) => {
    c.header("x-content-type-options", "nosniff");
    return streamSSE(c, async (stream) => {
      const ctl = new AbortController();
      const stop = () => ctl.abort();
      stream.onAbort(stop);
      shutdown.addEventListener("abort", stop, { once: true });
      if (shutdown.aborted) stop();

      // A bounded outbox: a slow browser is told to resync, it never makes us buffer
      // without limit.
      const outbox: { event: string; data: string }[] = [];
      let wake: (() => void) | null = null;
      function emit(event: string, data: unknown): void {
        if (outbox.length >= OUTBOX_LIMIT) {
          outbox.length = 0;
          outbox.push({ event: "resync", data: JSON.stringify({ reason: "too many events" }) });
        }
        outbox.push({ event, data: JSON.stringify(data) });
        wake?.();
      }
      ctl.signal.addEventListener("abort", () => wake?.(), { once: true });
      const leave = join(emit);
      try {
        while (!ctl.signal.aborted) {
          if (!outbox.length) {
            const tick = new Promise<void>((r) => wake = r);
            const keepAlive = setTimeout(() => wake?.(), 15_000);
            await tick;
            clearTimeout(keepAlive);
            wake = null;
            if (!outbox.length && !ctl.signal.aborted) {
              await stream.writeSSE({ event: "ping", data: "{}" });
            }
            continue;
          }
          const item = outbox.shift()!;
          await stream.writeSSE(item);
        }
      } finally {
        stop();
        shutdown.removeEventListener("abort", stop);
        await leave();
      }
    });
  });
}
