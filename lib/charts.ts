/**
 * Draws XState v5 statecharts: Mermaid `stateDiagram-v2` text, Graphviz DOT and SVG.
 *
 * Everything is read from the machine's static definition (`machine.root` and its
 * StateNodes), never from a running actor, so a chart can be drawn for any machine in
 * `machines/` without effects. Output is deterministic: states and transitions follow the
 * machine's document order (a property of the source, stable between runs), active paths
 * are sorted, and the SVG is stripped of Graphviz's version banner.
 *
 * SVG conventions a web page can rely on to highlight states itself:
 * - every state is a `<g>` with `id="state-<path>"` and `data-state="<path>"`, where
 *   `<path>` is the dot-joined key path (`running.waiting`), and a class list holding
 *   `state` plus its type (`atomic`, `compound`, `parallel`, `final`, `history`);
 * - highlighted states also carry class `active`; their compound ancestors `active-ancestor`;
 * - transitions are `<g class="edge transition">`.
 * @module
 */
import type { AnyStateMachine } from "xstate";
import type { Viz } from "@viz-js/viz";
import { Worker } from "node:worker_threads";

/** Options for the chart renderers. */
export interface ChartOptions {
  /**
   * States to highlight: key paths (`running.waiting`) or state ids (`machine.running`,
   * `#id`). Entries naming no state are ignored: a stale highlight must not break a chart.
   */
  active?: string[];
}

/** The parts of an XState StateNode the charts read (xstate keeps these typed loosely). */
interface ChartNode {
  key: string;
  id: string;
  path: string[];
  type: "atomic" | "compound" | "parallel" | "final" | "history";
  history: false | "shallow" | "deep";
  parent?: ChartNode;
  states: Record<string, ChartNode>;
  config: { initial?: unknown; target?: unknown };
  initial: { target: ChartNode[] };
  transitions: Map<string, ChartTransitionDef[]>;
  always?: ChartTransitionDef[];
  invoke: { id: string; src: string }[];
  entry: unknown[];
  exit: unknown[];
}

/** The parts of an XState transition definition the charts read. */
interface ChartTransitionDef {
  eventType: string;
  target?: ChartNode[];
  guard?: unknown;
  actions: unknown[];
  delay?: number | string;
}

/** One drawn transition, resolved to key paths (root is ""). */
interface Edge {
  source: string;
  target: string;
  label: string;
  kind: "transition" | "history-default";
  /** The event part of the label (`onDone(promote)`, `after 100ms`, `GO`). */
  event: string;
  /** The guard as drawn, when there is one. */
  guard?: string;
  /** Named actions, in order. */
  actions: string[];
  /** Set on a diff chart: how this transition changed. */
  mark?: DiffMark;
}

/** How a state or transition differs between two versions of a machine (chart diffs). */
export type DiffMark = "added" | "removed" | "changed";

/** A machine flattened into what both renderers need, in document order. */
interface Chart {
  title: string;
  root: ChartNode;
  nodes: Map<string, ChartNode>;
  edges: Edge[];
  /**
   * Targetless transitions by source path. They change no state (no exit, no entry), so
   * like UML internal transitions they are listed inside the state rather than drawn as
   * loops, which Graphviz stacks into unreadable piles on busy states.
   */
  internal: Map<string, string[]>;
  /** Diff charts: the state's detail lines, replacing what its node would list. */
  details?: Map<string, string[]>;
  /** Diff charts: states that were added, removed or changed. */
  marks?: Map<string, DiffMark>;
}

const HIGHLIGHT_FILL = "#fde68a";
const HIGHLIGHT_STROKE = "#b45309";
const HIGHLIGHT_CLUSTER_FILL = "#fef3c7";

function pathOf(node: ChartNode): string {
  return node.path.join(".");
}

function children(node: ChartNode): ChartNode[] {
  return Object.values(node.states ?? {});
}

function isContainer(node: ChartNode): boolean {
  return node.type === "compound" || node.type === "parallel";
}

/** True when `path` is `ancestor` or lies below it (root "" contains everything). */
function within(path: string, ancestor: string): boolean {
  return ancestor === "" || path === ancestor || path.startsWith(ancestor + ".");
}

function parentPath(path: string): string {
  const i = path.lastIndexOf(".");
  return i < 0 ? "" : path.slice(0, i);
}

/** A name for an action, or null for built-ins and anonymous inline functions. */
function actionName(action: unknown): string | null {
  if (typeof action === "string") return action.startsWith("xstate.") ? null : action;
  if (action && typeof action === "object" && "type" in action) {
    const type = (action as { type: unknown }).type;
    return typeof type === "string" && !type.startsWith("xstate.") ? type : null;
  }
  // Inline functions (assign, raise, enqueueActions, closures) have no stable name to show.
  return null;
}

function actionNames(actions: unknown[] | undefined): string[] {
  return (actions ?? []).map(actionName).filter((a): a is string => a !== null);
}

/** Renders a guard: names, `{ type }` objects, and xstate's and/or/not/stateIn combinators. */
function guardText(guard: unknown): string {
  if (typeof guard === "string") return guard;
  if (typeof guard === "function") {
    const g = guard as { name: string; guards?: unknown[]; stateValue?: unknown; check?: unknown };
    if (g.check && g.guards && g.name === "not") return `!${guardText(g.guards[0])}`;
    if (g.check && g.guards && (g.name === "and" || g.name === "or")) {
      const parts = g.guards.map((inner) => {
        const text = guardText(inner);
        return /\s/.test(text) ? `(${text})` : text;
      });
      return parts.join(g.name === "and" ? " && " : " || ");
    }
    if (g.check && g.name === "stateIn") {
      const value = typeof g.stateValue === "string"
        ? g.stateValue
        : activeStatePaths(g.stateValue).join(", ");
      return `in(${value})`;
    }
    // An inline arrow function is named after the property holding it ("guard").
    return g.name && g.name !== "guard" ? g.name : "inline";
  }
  if (guard && typeof guard === "object" && "type" in guard) {
    return String((guard as { type: unknown }).type);
  }
  return "inline";
}

/** The event part of a transition label, made readable for xstate's internal event names. */
function eventText(
  source: ChartNode,
  t: ChartTransitionDef,
  delays: Record<string, unknown>,
): string {
  const type = t.eventType;
  if (t.delay !== undefined || type.startsWith("xstate.after.")) {
    const delay = t.delay ?? type.slice("xstate.after.".length, -(source.id.length + 1));
    if (typeof delay === "number") return `after ${delay}ms`;
    const value = delays[delay];
    return typeof value === "number" ? `after ${delay} (${value}ms)` : `after ${delay}`;
  }
  if (type === `xstate.done.state.${source.id}`) return "onDone";
  if (type === "xstate.route") return "route";
  for (const inv of source.invoke) {
    if (type === `xstate.done.actor.${inv.id}`) return `onDone(${inv.src})`;
    if (type === `xstate.error.actor.${inv.id}`) return `onError(${inv.src})`;
    if (type === `xstate.snapshot.${inv.id}`) return `onSnapshot(${inv.src})`;
  }
  return type;
}

/** The parts of a transition's label: event, guard (if any) and named actions. */
function transitionParts(
  event: string,
  t: ChartTransitionDef,
): { event: string; guard?: string; actions: string[] } {
  // xstate.route wraps the user's guard in its own matcher; that matcher is noise.
  const guard = t.guard !== undefined && event !== "route" ? guardText(t.guard) : undefined;
  return { event, guard, actions: actionNames(t.actions) };
}

function partsLabel(parts: { event: string; guard?: string; actions: string[] }): string {
  let label = parts.event;
  if (parts.guard !== undefined) label += ` [${parts.guard}]`;
  if (parts.actions.length) label += ` / ${parts.actions.join(", ")}`;
  return label;
}

/** Resolves a history state's default target (`target` in its config), if it has one. */
function historyDefault(node: ChartNode, ids: Map<string, ChartNode>): ChartNode | undefined {
  const target = node.config.target;
  const first = Array.isArray(target) ? target[0] : target;
  if (typeof first !== "string") return undefined;
  if (first.startsWith("#")) return ids.get(first.slice(1));
  let at: ChartNode | undefined = node.parent;
  for (const key of first.replace(/^\./, "").split(".")) at = at?.states?.[key];
  return at;
}

function buildChart(machine: AnyStateMachine): Chart {
  const root = machine.root as unknown as ChartNode;
  const delays = (machine.implementations?.delays ?? {}) as Record<string, unknown>;
  const nodes = new Map<string, ChartNode>();
  const ids = new Map<string, ChartNode>();
  const edges: Edge[] = [];
  const internal = new Map<string, string[]>();
  const add = (source: string, t: ChartTransitionDef, event: string) => {
    const parts = transitionParts(event, t);
    const label = partsLabel(parts);
    if (!t.target?.length) {
      internal.set(source, [...(internal.get(source) ?? []), label]);
      return;
    }
    for (const target of t.target) {
      edges.push({ source, target: pathOf(target), label, kind: "transition", ...parts });
    }
  };
  const visit = (node: ChartNode) => {
    nodes.set(pathOf(node), node);
    ids.set(node.id, node);
    for (const child of children(node)) visit(child);
  };
  visit(root);
  const collect = (node: ChartNode) => {
    const source = pathOf(node);
    for (const defs of node.transitions?.values() ?? []) {
      for (const t of defs) add(source, t, eventText(node, t, delays));
    }
    for (const t of node.always ?? []) add(source, t, "always");
    if (node.type === "history") {
      const target = historyDefault(node, ids);
      if (target) {
        edges.push({
          source,
          target: pathOf(target),
          label: "",
          kind: "history-default",
          event: "default",
          actions: [],
        });
      }
    }
    for (const child of children(node)) collect(child);
  };
  collect(root);
  return { title: String(machine.id), root, nodes, edges, internal };
}

/** Resolves requested active entries to key paths; entries naming no state are ignored. */
function resolveActive(chart: Chart, active: string[] | undefined): Set<string> {
  const byId = new Map<string, string>();
  for (const [path, node] of chart.nodes) byId.set(node.id, path);
  const resolved = new Set<string>();
  for (const entry of active ?? []) {
    const bare = entry.startsWith("#") ? entry.slice(1) : entry;
    if (chart.nodes.has(bare) && bare !== "") resolved.add(bare);
    else if (byId.has(bare)) resolved.add(byId.get(bare)!);
  }
  resolved.delete("");
  return resolved;
}

/** Ancestors (excluding root) of the active paths. */
function activeAncestors(active: Set<string>): Set<string> {
  const out = new Set<string>();
  for (const path of active) {
    for (let p = parentPath(path); p !== ""; p = parentPath(p)) out.add(p);
  }
  return out;
}

/**
 * The active key paths of an XState state value, sorted: `"idle"` → `["idle"]`,
 * `{ running: { a: "x", b: "y" } }` → `["running.a.x", "running.b.y"]`.
 */
export function activeStatePaths(snapshotValue: unknown): string[] {
  const out: string[] = [];
  const walk = (value: unknown, prefix: string) => {
    if (typeof value === "string") {
      out.push(prefix ? `${prefix}.${value}` : value);
    } else if (value && typeof value === "object") {
      const entries = Object.entries(value as Record<string, unknown>);
      // A compound whose child value is empty (e.g. `{ running: {} }`) is itself the leaf.
      if (entries.length === 0 && prefix) out.push(prefix);
      for (const [key, inner] of entries) {
        const path = prefix ? `${prefix}.${key}` : key;
        if (inner === undefined || inner === null) out.push(path);
        else walk(inner, path);
      }
    }
  };
  walk(snapshotValue, "");
  return [...new Set(out)].sort();
}

// ---------------------------------------------------------------------------------------
// Mermaid

/** Mermaid ids must be plain identifiers and unique across the whole diagram. */
function mermaidIds(chart: Chart): Map<string, string> {
  const ids = new Map<string, string>();
  const used = new Set<string>();
  for (const path of chart.nodes.keys()) {
    const base = path === "" ? "root" : "s_" + path.replace(/[^A-Za-z0-9_]/g, "_");
    let id = base;
    for (let n = 2; used.has(id); n++) id = `${base}_${n}`;
    used.add(id);
    ids.set(path, id);
  }
  return ids;
}

/** Keeps Mermaid's parser away from characters that end or escape a statement. */
function mermaidText(text: string): string {
  return text.replace(/[#;\n]/g, (c) => (c === "#" ? "#35;" : c === ";" ? "#59;" : " "));
}

/** Lines listed inside a state: entry/exit actions, invoked actors, internal transitions. */
function stateDetails(chart: Chart, node: ChartNode): string[] {
  const override = chart.details?.get(pathOf(node));
  if (override) return override;
  const lines: string[] = [];
  const entry = actionNames(node.entry);
  const exit = actionNames(node.exit);
  if (entry.length) lines.push(`entry / ${entry.join(", ")}`);
  if (exit.length) lines.push(`exit / ${exit.join(", ")}`);
  for (const inv of node.invoke ?? []) lines.push(`invoke ${inv.src}`);
  lines.push(...(chart.internal.get(pathOf(node)) ?? []));
  return lines;
}

function displayKey(node: ChartNode): string {
  if (node.type === "history") return node.history === "deep" ? "H*" : "H";
  return node.key;
}

/**
 * Where a transition is written: the block of the deepest container holding both ends.
 * Mermaid draws a parallel state's regions as `--`-separated blocks, so a transition whose
 * common container is a parallel state goes one level up rather than into a region.
 */
function mermaidHome(chart: Chart, edge: Edge): string {
  let home = parentPath(edge.source);
  const other = edge.target;
  while (!within(other, home) || (home !== "" && other === home)) home = parentPath(home);
  while (home !== "" && chart.nodes.get(home)?.type === "parallel") home = parentPath(home);
  return home;
}

/** Mermaid `stateDiagram-v2` text of a machine; same machine, same text. */
export function toMermaid(machine: AnyStateMachine): string {
  const chart = buildChart(machine);
  const ids = mermaidIds(chart);
  // Transitions the machine takes from (or to) its root need the root drawn as a state.
  const touchesRoot = (edge: Edge) => edge.source === "" || edge.target === "";
  // A parallel root is wrapped too: Mermaid files anything written after its last `--`
  // under the last region, so transitions between regions need a place outside them.
  const wrapRoot = chart.root.type !== "compound" || chart.edges.some(touchesRoot) ||
    stateDetails(chart, chart.root).length > 0;
  const edgesByHome = new Map<string | null, Edge[]>();
  for (const edge of chart.edges) {
    let home: string | null = mermaidHome(chart, edge);
    if (wrapRoot && (touchesRoot(edge) || (home === "" && chart.root.type === "parallel"))) {
      home = null;
    }
    edgesByHome.set(home, [...(edgesByHome.get(home) ?? []), edge]);
  }
  const lines = [`%% ${mermaidText(chart.title)}`, "stateDiagram-v2"];
  const emitEdges = (home: string | null, indent: string) => {
    for (const edge of edgesByHome.get(home) ?? []) {
      const from = ids.get(edge.source)!;
      const to = ids.get(edge.target)!;
      const label = edge.kind === "history-default" ? "default" : edge.label;
      lines.push(`${indent}${from} --> ${to}${label ? ` : ${mermaidText(label)}` : ""}`);
    }
  };
  const stateName = (text: string, id: string) =>
    `state "${mermaidText(text).replace(/"/g, "#quot;")}" as ${id}`;
  const emitBody = (node: ChartNode, indent: string) => {
    if (node.type === "compound" && node.initial?.target?.length) {
      for (const target of node.initial.target) {
        lines.push(`${indent}[*] --> ${ids.get(pathOf(target))}`);
      }
    }
    children(node).forEach((child, i) => {
      if (node.type === "parallel" && i > 0) lines.push(`${indent}--`);
      emitState(child, indent);
    });
    emitEdges(pathOf(node), indent);
  };
  // Mermaid rejects description lines on composite states, so theirs go in a note.
  const emitDetails = (node: ChartNode, id: string, details: string[], indent: string) => {
    if (!details.length) return;
    if (!isContainer(node)) {
      for (const detail of details) lines.push(`${indent}${id} : ${mermaidText(detail)}`);
      return;
    }
    lines.push(`${indent}note right of ${id}`);
    for (const detail of details) lines.push(`${indent}  ${mermaidText(detail)}`);
    lines.push(`${indent}end note`);
  };
  const emitState = (node: ChartNode, indent: string) => {
    const id = ids.get(pathOf(node))!;
    if (isContainer(node)) {
      lines.push(`${indent}${stateName(displayKey(node), id)} {`);
      emitBody(node, indent + "  ");
      lines.push(`${indent}}`);
    } else {
      lines.push(`${indent}${stateName(displayKey(node), id)}`);
    }
    const details = stateDetails(chart, node);
    if (node.type === "history") details.push(`history (${node.history || "shallow"})`);
    emitDetails(node, id, details, indent);
    if (node.type === "final") lines.push(`${indent}${id} --> [*]`);
  };
  if (!wrapRoot) {
    emitBody(chart.root, "  ");
  } else if (isContainer(chart.root)) {
    lines.push(`  [*] --> root`);
    lines.push(`  ${stateName(chart.title, "root")} {`);
    emitBody(chart.root, "    ");
    lines.push("  }");
  } else {
    lines.push(`  ${stateName(chart.title, "root")}`);
  }
  if (wrapRoot) emitDetails(chart.root, "root", stateDetails(chart, chart.root), "  ");
  emitEdges(null, "  ");
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------
// DOT

/** DOT-escaped text without quotes. */
function dotEscape(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, " ");
}

function dotString(text: string): string {
  return `"${dotEscape(text)}"`;
}

/** A state label: the name centred, then its details left-aligned like a UML state box. */
function dotLabel(name: string, details: string[]): { raw: string } {
  if (!details.length) return { raw: dotString(name) };
  return { raw: `"${dotEscape(name)}\\n${details.map((d) => `${dotEscape(d)}\\l`).join("")}"` };
}

type DotValue = string | number | { raw: string } | undefined;

function dotAttrs(attrs: Record<string, DotValue>): string {
  const parts: string[] = [];
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined) continue;
    const text = typeof value === "number"
      ? String(value)
      : typeof value === "string"
      ? dotString(value)
      : value.raw;
    parts.push(`${key}=${text}`);
  }
  return parts.length ? ` [${parts.join(", ")}]` : "";
}

/**
 * Names of pseudo-nodes. They contain "/", which no key path does, so they cannot clash
 * with a state: `<path>/initial` is a compound state's initial dot, `<path>/entry` the
 * invisible point a parallel state's edges attach to, `<path>/any` the "(any)" source of
 * transitions a container takes towards its own descendants.
 */
function pseudo(path: string, kind: "initial" | "entry" | "any"): string {
  return `${path}/${kind}`;
}

function ownerOf(name: string): string {
  const slash = name.indexOf("/");
  return slash < 0 ? name : name.slice(0, slash);
}

/** The node an edge uses to enter (or leave, clipped) a container's cluster. */
function entryNode(node: ChartNode): string {
  const path = pathOf(node);
  return pseudo(path, node.type === "compound" ? "initial" : "entry");
}

interface DotEdge {
  tail: string;
  head: string;
  ltail?: string;
  lhead?: string;
}

/**
 * Graphviz draws containers as clusters, and edges can only join nodes. An edge between a
 * container and a state outside it is attached to the container's entry node and clipped
 * at the border with `ltail`/`lhead`. Transitions a container takes towards itself or its
 * own descendants start at an "(any)" node inside it: "from whichever state in here".
 */
function dotEnds(chart: Chart, source: string, target: string): DotEdge {
  const from = chart.nodes.get(source)!;
  const to = chart.nodes.get(target)!;
  let tail = source;
  if (isContainer(from)) tail = within(target, source) ? pseudo(source, "any") : entryNode(from);
  const head = isContainer(to) ? entryNode(to) : target;
  const ends: DotEdge = { tail, head };
  if (isContainer(from) && source !== "" && !within(ownerOf(head), source)) {
    ends.ltail = `cluster_${source}`;
  }
  if (isContainer(to) && target !== "" && !within(ownerOf(tail), target)) {
    ends.lhead = `cluster_${target}`;
  }
  return ends;
}

/** Graphviz DOT of a machine, with clusters for compound and parallel states. */
export function toDot(machine: AnyStateMachine, options: ChartOptions = {}): string {
  return chartDot(buildChart(machine), options);
}

/** Colours of diff marks: stroke/text and fill. */
const DIFF_STYLE: Record<DiffMark, { color: string; fill: string }> = {
  added: { color: "#15803d", fill: "#dcfce7" },
  removed: { color: "#b91c1c", fill: "#fee2e2" },
  changed: { color: "#c2410c", fill: "#ffedd5" },
};

function chartDot(chart: Chart, options: ChartOptions & { subtitle?: string } = {}): string {
  const active = resolveActive(chart, options.active);
  const ancestors = activeAncestors(active);
  const edges: (DotEdge & {
    label?: string;
    style?: string;
    class: string;
    color?: string;
    penwidth?: number;
  })[] = [];
  // Initial transitions first, so each container's initial dot ranks before its states.
  for (const [path, node] of chart.nodes) {
    if (node.type !== "compound") continue;
    for (const target of node.initial.target) {
      const head = isContainer(target) ? entryNode(target) : pathOf(target);
      const lhead = isContainer(target) ? `cluster_${pathOf(target)}` : undefined;
      edges.push({ tail: pseudo(path, "initial"), head, lhead, class: "initial-transition" });
    }
  }
  for (const edge of chart.edges) {
    const history = edge.kind === "history-default";
    const mark = edge.mark;
    edges.push({
      ...dotEnds(chart, edge.source, edge.target),
      label: edge.label || undefined,
      style: history || mark === "removed" ? "dashed" : undefined,
      class: (history ? "history-default" : "transition") + (mark ? ` diff-${mark}` : ""),
      color: mark ? DIFF_STYLE[mark].color : undefined,
      penwidth: mark ? 2 : undefined,
    });
  }
  const used = new Set(edges.flatMap((e) => [e.tail, e.head]));
  const rootDetails = stateDetails(chart, chart.root);
  const lines = [
    `digraph ${dotString(chart.title)} {`,
    `  graph${
      dotAttrs({
        compound: "true",
        rankdir: "LR",
        fontname: "Helvetica",
        fontsize: 14,
        label: rootDetails.length
          ? dotLabel(chart.title, rootDetails)
          : options.subtitle
          ? dotLabel(chart.title, [options.subtitle])
          : chart.title,
        labelloc: "t",
        nodesep: 0.3,
        ranksep: 0.4,
        // Graphviz sizes text with Helvetica metrics; a viewer substituting a wider font
        // would otherwise clip labels at the edge of the picture.
        pad: 0.25,
        id: "chart",
        class: "chart",
      })
    }`,
    `  node${
      dotAttrs({
        shape: "box",
        style: "rounded,filled",
        fillcolor: "#ffffff",
        color: "#475569",
        fontname: "Helvetica",
        fontsize: 11,
      })
    }`,
    `  edge${dotAttrs({ fontname: "Helvetica", fontsize: 9, color: "#64748b", arrowsize: 0.7 })}`,
  ];
  const emitPseudo = (node: ChartNode, indent: string) => {
    const path = pathOf(node);
    const suffix = path || "root";
    if (node.type === "compound") {
      const attrs = { shape: "point", width: 0.12, fillcolor: "#1e293b", color: "#1e293b" };
      lines.push(
        `${indent}${dotString(pseudo(path, "initial"))}${
          dotAttrs({ ...attrs, class: "initial", id: `initial-${suffix}` })
        }`,
      );
    } else if (used.has(pseudo(path, "entry"))) {
      lines.push(
        `${indent}${dotString(pseudo(path, "entry"))}${
          // A parallel root has no cluster border to clip at, so its entry stays visible.
          path === ""
            ? dotAttrs({ shape: "point", width: 0.12, fillcolor: "#1e293b", id: "entry-root" })
            : dotAttrs({ shape: "point", style: "invis", width: 0.01, id: `entry-${suffix}` })}`,
      );
    }
    if (used.has(pseudo(path, "any"))) {
      lines.push(
        `${indent}${dotString(pseudo(path, "any"))}${
          dotAttrs({
            shape: "plaintext",
            style: "",
            label: "(any)",
            fontcolor: "#64748b",
            class: "any",
            id: `any-${suffix}`,
          })
        }`,
      );
    }
  };
  const emitState = (node: ChartNode, indent: string) => {
    const path = pathOf(node);
    const isActive = active.has(path);
    const isAncestor = ancestors.has(path);
    const classes = ["state", node.type];
    if (isActive) classes.push("active");
    if (isAncestor) classes.push("active-ancestor");
    const mark = chart.marks?.get(path);
    if (mark) classes.push(`diff-${mark}`);
    const diff = mark ? DIFF_STYLE[mark] : undefined;
    const label = dotLabel(displayKey(node), stateDetails(chart, node));
    if (isContainer(node)) {
      const style = ["rounded"];
      // Regions of a parallel state are dashed, as in Harel's and UML's notation.
      if (node.parent?.type === "parallel" || mark === "removed") style.push("dashed");
      if (isActive || diff) style.push("filled");
      lines.push(`${indent}subgraph ${dotString(`cluster_${path}`)} {`);
      lines.push(
        `${indent}  graph${
          dotAttrs({
            label,
            id: `state-${path}`,
            class: classes.join(" "),
            style: style.join(","),
            color: diff?.color ?? (isActive || isAncestor ? HIGHLIGHT_STROKE : "#475569"),
            fontcolor: diff?.color,
            penwidth: diff ? 2 : isActive ? 3 : isAncestor ? 2 : 1,
            fillcolor: diff?.fill ?? (isActive ? HIGHLIGHT_CLUSTER_FILL : undefined),
            fontsize: 12,
            margin: 10,
          })
        }`,
      );
      emitPseudo(node, indent + "  ");
      for (const child of children(node)) emitState(child, indent + "  ");
      lines.push(`${indent}}`);
      return;
    }
    const history = node.type === "history";
    lines.push(
      `${indent}${dotString(path)}${
        dotAttrs({
          shape: history ? "circle" : undefined,
          width: history ? 0.3 : undefined,
          fixedsize: history ? "true" : undefined,
          label: history ? displayKey(node) : label,
          id: `state-${path}`,
          class: classes.join(" "),
          peripheries: node.type === "final" ? 2 : undefined,
          style: mark === "removed" ? "rounded,filled,dashed" : undefined,
          fillcolor: diff?.fill ?? (isActive ? HIGHLIGHT_FILL : undefined),
          color: diff?.color ?? (isActive ? HIGHLIGHT_STROKE : undefined),
          fontcolor: diff?.color,
          penwidth: diff ? 2 : isActive ? 3 : undefined,
        })
      }`,
    );
  };
  if (isContainer(chart.root)) {
    emitPseudo(chart.root, "  ");
    for (const child of children(chart.root)) emitState(child, "  ");
  } else {
    lines.push(
      `  ${dotString("")}${dotAttrs({ label: chart.title, id: "state-", class: "state" })}`,
    );
  }
  for (const e of edges) {
    // A clipped edge's `label` is placed on its unclipped path, often deep inside the
    // cluster; an `xlabel` is placed beside the part that is actually drawn.
    const clipped = e.ltail !== undefined || e.lhead !== undefined;
    const attrs = dotAttrs({
      label: clipped ? undefined : e.label,
      xlabel: clipped ? e.label : undefined,
      ltail: e.ltail,
      lhead: e.lhead,
      style: e.style,
      class: e.class,
      color: e.color,
      fontcolor: e.color,
      penwidth: e.penwidth,
    });
    lines.push(`  ${dotString(e.tail)} -> ${dotString(e.head)}${attrs}`);
  }
  lines.push("}");
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------
// SVG

let vizPromise: Promise<Viz> | undefined;

/** One Graphviz WASM instance per process: instantiating it costs far more than a render. */
function viz(): Promise<Viz> {
  // Loaded on the first in-process render (Graphviz's WASM, a few MB): servers render in the
  // worker (renderSvgOffThread) and need not carry it.
  vizPromise ??= import("@viz-js/viz").then((m) => m.instance());
  return vizPromise;
}

/**
 * Makes Graphviz's SVG stable and addressable: drops the version banner (it changes with
 * the library, not the chart), un-escapes `-` in ids (Graphviz writes `&#45;`), and adds
 * `data-state` so pages can select states without CSS-escaping the dots in ids.
 */
function polishSvg(svg: string): string {
  return svg
    .replace(/<!-- Generated by graphviz[\s\S]*?-->\n/, "")
    .replace(
      / (id|class)="([^"]*)"/g,
      (_m, attr: string, value: string) => ` ${attr}="${value.replaceAll("&#45;", "-")}"`,
    )
    .replace(
      /<g id="state-([^"]*)" class="([^"]*)"/g,
      '<g id="state-$1" class="$2" data-state="$1"',
    );
}

// The worker that renders for servers (see renderSvgOffThread): started for a burst of
// renders, ended when none is left (an idle worker would keep the process alive; renders are
// rare, the chart routes cache them).
let worker: Worker | null = null;
let jobs = 0;
const waiting = new Map<number, { resolve(svg: string): void; reject(err: Error): void }>();

function graphvizWorker(): Worker {
  if (worker) return worker;
  const w = new Worker(new URL("./charts_worker.ts", import.meta.url));
  w.on("message", (msg: { id: number; svg?: string; error?: string }) => {
    const job = waiting.get(msg.id);
    waiting.delete(msg.id);
    if (!job) return;
    if (msg.svg !== undefined) job.resolve(msg.svg);
    else job.reject(new Error(msg.error ?? "the chart worker failed"));
    if (!waiting.size && worker === w) {
      worker = null;
      w.terminate();
    }
  });
  const fail = (err: unknown) => {
    if (worker === w) worker = null;
    for (const job of waiting.values()) {
      job.reject(err instanceof Error ? err : new Error(String(err)));
    }
    waiting.clear();
  };
  w.on("error", fail);
  w.on("exit", () => fail(new Error("the chart worker exited")));
  worker = w;
  return w;
}

/**
 * {@linkcode renderSvg} with Graphviz in a worker thread, for servers: the DOT is made here,
 * the layout (the costly part) runs beside the event loop instead of blocking it.
 */
export async function renderSvgOffThread(
  machine: AnyStateMachine,
  options: ChartOptions = {},
): Promise<string> {
  const dot = toDot(machine, options);
  const w = graphvizWorker();
  const id = ++jobs;
  const svg = await new Promise<string>((resolve, reject) => {
    waiting.set(id, { resolve, reject });
    w.postMessage({ id, dot });
  }).catch((err: Error) => {
    throw new Error(`Cannot render chart ${String(machine.id)}: ${err.message}`);
  });
  return polishSvg(svg);
}

/** SVG of a machine rendered by Graphviz (WASM), with `options.active` states highlighted. */
export async function renderSvg(
  machine: AnyStateMachine,
  options: ChartOptions = {},
): Promise<string> {
  const dot = toDot(machine, options);
  const result = (await viz()).render(dot, { format: "svg" });
  if (result.status !== "success") {
    const detail = result.errors.map((e) => e.message).join("; ");
    throw new Error(`Cannot render chart ${String(machine.id)}: ${detail}`);
  }
  return polishSvg(result.output);
}

// ---------------------------------------------------------------------------------------
// Chart diffs

/** One transition as a reviewer reads it. */
export interface TransitionText {
  /** Source state path ("" is the machine itself). */
  source: string;
  /** Target state path. */
  target: string;
  /** Event as drawn (`GO`, `after 100ms`, `onDone(promote)`). */
  event: string;
  /** Guard as drawn, when there is one. */
  guard?: string;
  /** Named actions. */
  actions: string[];
}

/** What changed in one machine between two versions, state by state and edge by edge. */
export interface ChartDiff {
  /** The machine's id (the after version's, or the before one's when it was removed). */
  title: string;
  /** States (key paths) only in the after version. */
  addedStates: string[];
  /** States only in the before version. */
  removedStates: string[];
  /** States in both whose type, initial state or details (entry, exit, invoke, internal) changed. */
  changedStates: { path: string; notes: string[] }[];
  /** Transitions only in the after version. */
  addedTransitions: TransitionText[];
  /** Transitions only in the before version. */
  removedTransitions: TransitionText[];
  /** Transitions in both (same source, event, target) whose guard or actions changed. */
  changedTransitions: { before: TransitionText; after: TransitionText }[];
}

/** True when a diff found nothing to show. */
export function isEmptyDiff(diff: ChartDiff): boolean {
  return !diff.addedStates.length && !diff.removedStates.length &&
    !diff.changedStates.length && !diff.addedTransitions.length &&
    !diff.removedTransitions.length && !diff.changedTransitions.length;
}

/** A machine with no states: the "before" of a machine that is new, the "after" of one removed. */
function emptyChart(title: string): Chart {
  const root: ChartNode = {
    key: title,
    id: title,
    path: [],
    type: "compound",
    history: false,
    states: {},
    config: {},
    initial: { target: [] },
    transitions: new Map(),
    invoke: [],
    entry: [],
    exit: [],
  };
  return { title, root, nodes: new Map([["", root]]), edges: [], internal: new Map() };
}

/**
 * One tree holding the states of both versions: the after version's children in their
 * order, then the before version's removed ones. A state that gained or lost children is
 * drawn as a container so the removed children still have somewhere to be.
 */
function mergeNodes(after?: ChartNode, before?: ChartNode, parent?: ChartNode): ChartNode {
  const base = (after ?? before)!;
  const node: ChartNode = {
    key: base.key,
    id: base.id,
    path: base.path,
    type: base.type,
    history: base.history,
    parent,
    states: {},
    config: base.config,
    initial: base.initial,
    transitions: base.transitions,
    always: base.always,
    invoke: base.invoke,
    entry: base.entry,
    exit: base.exit,
  };
  const keys = Object.keys(after?.states ?? {});
  for (const key of Object.keys(before?.states ?? {})) if (!keys.includes(key)) keys.push(key);
  for (const key of keys) {
    node.states[key] = mergeNodes(after?.states?.[key], before?.states?.[key], node);
  }
  if (keys.length && !isContainer(node)) node.type = "compound";
  return node;
}

function edgeKey(edge: Edge): string {
  return `${edge.kind}\u0000${edge.source}\u0000${edge.event}\u0000${edge.target}`;
}

function textOf(edge: Edge): TransitionText {
  const text: TransitionText = {
    source: edge.source,
    target: edge.target,
    event: edge.event,
    actions: edge.actions,
  };
  if (edge.guard !== undefined) text.guard = edge.guard;
  return text;
}

function sameParts(a: Edge, b: Edge): boolean {
  return a.guard === b.guard && a.actions.join("\u0000") === b.actions.join("\u0000");
}

function whatChanged(before: Edge, after: Edge): string {
  const notes: string[] = [];
  if (before.guard !== after.guard) notes.push(`was [${before.guard ?? "no guard"}]`);
  if (before.actions.join() !== after.actions.join()) {
    notes.push(`was / ${before.actions.join(", ") || "no actions"}`);
  }
  return notes.join("; ");
}

/** Compares two charts; returns the diff and the merged chart that draws it. */
function compareCharts(before: Chart, after: Chart): { diff: ChartDiff; merged: Chart } {
  const diff: ChartDiff = {
    title: after.nodes.size > 1 || before.nodes.size <= 1 ? after.title : before.title,
    addedStates: [],
    removedStates: [],
    changedStates: [],
    addedTransitions: [],
    removedTransitions: [],
    changedTransitions: [],
  };
  const root = mergeNodes(after.root, before.root);
  const nodes = new Map<string, ChartNode>();
  const visit = (node: ChartNode) => {
    nodes.set(pathOf(node), node);
    for (const child of children(node)) visit(child);
  };
  visit(root);
  const marks = new Map<string, DiffMark>();
  const details = new Map<string, string[]>();
  for (const path of nodes.keys()) {
    const a = after.nodes.get(path);
    const b = before.nodes.get(path);
    if (path !== "" && a && !b) {
      marks.set(path, "added");
      diff.addedStates.push(path);
    } else if (path !== "" && b && !a) {
      marks.set(path, "removed");
      diff.removedStates.push(path);
      details.set(path, stateDetails(before, b));
    }
    if (!a || !b) continue;
    const notes: string[] = [];
    if (a.type !== b.type) notes.push(`type ${b.type} → ${a.type}`);
    const initialOf = (n: ChartNode) => (n.initial?.target ?? []).map(pathOf).join(", ");
    if (a.type === "compound" && b.type === "compound" && initialOf(a) !== initialOf(b)) {
      notes.push(`initial ${initialOf(b) || "none"} → ${initialOf(a) || "none"}`);
    }
    const was = stateDetails(before, b);
    const now = stateDetails(after, a);
    const lines = now.map((line) => (was.includes(line) ? line : `+ ${line}`));
    for (const line of was) {
      if (!now.includes(line)) {
        lines.push(`- ${line}`);
        notes.push(`removed: ${line}`);
      }
    }
    for (const line of now) if (!was.includes(line)) notes.push(`added: ${line}`);
    if (notes.length) {
      details.set(path, [...lines, ...notes.filter((n) => !/^(added|removed): /.test(n))]);
      marks.set(path, "changed");
      diff.changedStates.push({ path, notes });
    } else {
      details.set(path, now);
    }
  }
  for (const path of diff.addedStates) {
    details.set(path, stateDetails(after, after.nodes.get(path)!));
  }
  const group = (edges: Edge[]) => {
    const out = new Map<string, Edge[]>();
    for (const edge of edges) out.set(edgeKey(edge), [...(out.get(edgeKey(edge)) ?? []), edge]);
    return out;
  };
  const beforeEdges = group(before.edges);
  const afterEdges = group(after.edges);
  const edges: Edge[] = [];
  for (const edge of after.edges) {
    const olds = beforeEdges.get(edgeKey(edge)) ?? [];
    const index = afterEdges.get(edgeKey(edge))!.indexOf(edge);
    const old = olds[index];
    if (!old) {
      edges.push({ ...edge, mark: "added" });
      diff.addedTransitions.push(textOf(edge));
    } else if (!sameParts(old, edge)) {
      edges.push({ ...edge, label: `${edge.label} (${whatChanged(old, edge)})`, mark: "changed" });
      diff.changedTransitions.push({ before: textOf(old), after: textOf(edge) });
    } else {
      edges.push(edge);
    }
  }
  for (const edge of before.edges) {
    const news = afterEdges.get(edgeKey(edge)) ?? [];
    const index = beforeEdges.get(edgeKey(edge))!.indexOf(edge);
    if (news[index]) continue;
    edges.push({ ...edge, mark: "removed" });
    diff.removedTransitions.push(textOf(edge));
  }
  const merged: Chart = {
    title: diff.title,
    root,
    nodes,
    edges,
    internal: new Map(),
    details,
    marks,
  };
  return { diff, merged };
}

/** Options of {@linkcode diffCharts}. */
export interface DiffChartOptions {
  /** A line under the title (e.g. "changes since main"). */
  subtitle?: string;
}

/** Strikes through the text of removed states and transitions (DOT has no such attribute). */
function strikeRemoved(svg: string): string {
  return svg.split("<g ").map((part) => {
    const open = part.slice(0, part.indexOf(">") + 1);
    if (!/class="[^"]*diff-removed/.test(open)) return part;
    return part.replaceAll("<text ", '<text text-decoration="line-through" ');
  }).join("<g ");
}

/**
 * Compares two versions of a machine (either may be null: the machine is new, or gone) and
 * draws one SVG: added states and transitions in green, removed ones red, dashed and struck
 * through, changed ones orange with what they were. Returns null when nothing changed.
 */
export async function diffCharts(
  before: AnyStateMachine | null,
  after: AnyStateMachine | null,
  options: DiffChartOptions = {},
): Promise<{ diff: ChartDiff; svg: string } | null> {
  if (!before && !after) return null;
  const a = after ? buildChart(after) : emptyChart(String(before!.id));
  const b = before ? buildChart(before) : emptyChart(String(after!.id));
  const { diff, merged } = compareCharts(b, a);
  if (isEmptyDiff(diff)) return null;
  const legend = "green: added · red, dashed, struck through: removed · orange: changed";
  const subtitle = [options.subtitle, legend].filter(Boolean).join(" — ");
  const dot = chartDot(merged, { subtitle });
  const result = (await viz()).render(dot, { format: "svg" });
  if (result.status !== "success") {
    const detail = result.errors.map((e) => e.message).join("; ");
    throw new Error(`Cannot render the diff of chart ${diff.title}: ${detail}`);
  }
  return { diff, svg: strikeRemoved(polishSvg(result.output)) };
}

function transitionMd(t: TransitionText): string {
  let text = `\`${t.source || "(machine)"}\` —${t.event}`;
  if (t.guard !== undefined) text += ` [${t.guard}]`;
  if (t.actions.length) text += ` / ${t.actions.join(", ")}`;
  return `${text}→ \`${t.target || "(machine)"}\``;
}

/** A markdown section for one machine's diff, for a pull-request comment. */
export function diffMarkdown(name: string, diff: ChartDiff, svgFile?: string): string {
  const lines = [`### \`${name}\``, ""];
  const count = (n: number, what: string) => `${n} ${what}${n === 1 ? "" : "s"}`;
  lines.push(
    `States: +${diff.addedStates.length} −${diff.removedStates.length} ~${diff.changedStates.length}; ` +
      `transitions: +${diff.addedTransitions.length} −${diff.removedTransitions.length} ~${diff.changedTransitions.length}` +
      (svgFile ? ` (picture: \`${svgFile}\`)` : ""),
    "",
  );
  if (diff.addedStates.length) {
    lines.push(
      `- **${count(diff.addedStates.length, "state")} added:** ${
        diff.addedStates.map((s) => `\`${s}\``).join(", ")
      }`,
    );
  }
  if (diff.removedStates.length) {
    lines.push(
      `- **${count(diff.removedStates.length, "state")} removed:** ${
        diff.removedStates.map((s) => `~~\`${s}\`~~`).join(", ")
      }`,
    );
  }
  for (const state of diff.changedStates) {
    lines.push(`- **state changed:** \`${state.path || "(machine)"}\`: ${state.notes.join("; ")}`);
  }
  for (const t of diff.addedTransitions) lines.push(`- **transition added:** ${transitionMd(t)}`);
  for (const t of diff.removedTransitions) {
    lines.push(`- **transition removed:** ~~${transitionMd(t)}~~`);
  }
  for (const { before, after } of diff.changedTransitions) {
    const parts: string[] = [];
    if (before.guard !== after.guard) {
      parts.push(`guard \`${before.guard ?? "none"}\` → \`${after.guard ?? "none"}\``);
    }
    if (before.actions.join() !== after.actions.join()) {
      parts.push(
        `actions \`${before.actions.join(", ") || "none"}\` → \`${
          after.actions.join(", ") || "none"
        }\``,
      );
    }
    lines.push(`- **transition changed:** ${transitionMd(after)}: ${parts.join("; ")}`);
  }
  return lines.join("\n") + "\n";
}
