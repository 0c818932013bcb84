/**
 * Statechart SVGs made safe to inline in the console page, then highlighted per actor.
 *
 * A chart comes from an instance's `GET /charts/<machine>.svg` (Graphviz output), possibly
 * from another host. Before it is inlined, every element and attribute outside a small
 * allow-list of drawing primitives is dropped and every value re-escaped, so a chart can
 * carry no script, handler or link whoever produced it. Ids are dropped too: one machine
 * may be drawn many times on a page; states stay addressable through `data-state`.
 * @module
 */
import { escapeHtml } from "./html.ts";

/** A chart ready to be highlighted: serialized SVG pieces around each state group. */
export interface ChartTemplate {
  /** Alternating literal SVG text and state slots, in document order. */
  parts: (string | StateSlot)[];
  /** Every state path the chart draws. */
  states: string[];
  /** Natural width in CSS pixels (from the `width` attribute or the viewBox), if known. */
  width: number | null;
}

/** Where a state's `<g>` opening tag goes; its class list depends on the actor's state. */
interface StateSlot {
  /** Dot-joined key path of the state. */
  state: string;
  /** Classes other than the highlight ones (`state`, `atomic`, …). */
  classes: string[];
}

const ELEMENTS = new Set([
  "svg",
  "g",
  "title",
  "path",
  "polygon",
  "polyline",
  "ellipse",
  "circle",
  "line",
  "rect",
  "text",
  "tspan",
]);

const ATTRIBUTES = new Set([
  "class",
  "cx",
  "cy",
  "r",
  "rx",
  "ry",
  "d",
  "points",
  "x",
  "y",
  "x1",
  "x2",
  "y1",
  "y2",
  "dx",
  "dy",
  "width",
  "height",
  "viewbox",
  "transform",
  "fill",
  "fill-opacity",
  "stroke",
  "stroke-width",
  "stroke-dasharray",
  "stroke-opacity",
  "font-family",
  "font-size",
  "font-weight",
  "font-style",
  "text-anchor",
  "data-state",
]);

/** Classes the console computes itself; a chart's own highlight is not trusted. */
const HIGHLIGHT = new Set(["active", "active-ancestor"]);

const ENTITY: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

/** Decodes the XML entities Graphviz writes; unknown ones are kept as text. */
function decodeEntities(text: string): string {
  return text.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (m, body: string) => {
    if (body[0] === "#") {
      const code = body[1] === "x" || body[1] === "X"
        ? parseInt(body.slice(2), 16)
        : parseInt(body.slice(1), 10);
      return Number.isFinite(code) && code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : m;
    }
    return ENTITY[body.toLowerCase()] ?? m;
  });
}

function parseAttributes(source: string): [string, string][] {
  const out: [string, string][] = [];
  const re = /([^\s=\/"'>]+)\s*=\s*("([^"]*)"|'([^']*)')/g;
  for (const m of source.matchAll(re)) out.push([m[1], decodeEntities(m[3] ?? m[4] ?? "")]);
  return out;
}

/**
 * Parses Graphviz SVG into a template, keeping only drawing primitives. Throws when the
 * text holds no `<svg>` element.
 */
export function parseChartSvg(svg: string): ChartTemplate {
  const parts: (string | StateSlot)[] = [];
  const states: string[] = [];
  let text = "";
  const flush = () => {
    if (text) parts.push(text);
    text = "";
  };
  // Depth of dropped elements we are inside: their content goes too.
  let skipping = 0;
  const skipStack: string[] = [];
  let sawSvg = false;
  let width: number | null = null;
  const re =
    /<!--[\s\S]*?-->|<!\[CDATA\[[\s\S]*?\]\]>|<[!?][^>]*>|<(\/?)([A-Za-z][\w:.-]*)([^>]*?)(\/?)>|([^<]+)/g;
  for (const m of svg.matchAll(re)) {
    const [whole, closing, rawName, attrs, selfClosing, chars] = m;
    if (chars !== undefined) {
      if (!skipping && sawSvg) text += escapeHtml(decodeEntities(chars));
      continue;
    }
    if (!rawName) continue; // comment, doctype, processing instruction, CDATA
    const name = rawName.toLowerCase();
    const allowed = ELEMENTS.has(name);
    if (closing) {
      if (skipping) {
        if (skipStack[skipStack.length - 1] === name) {
          skipStack.pop();
          skipping--;
        }
        continue;
      }
      if (allowed) text += `</${name}>`;
      continue;
    }
    if (skipping || !allowed) {
      if (!selfClosing && !whole.endsWith("/>")) {
        skipStack.push(name);
        skipping++;
      }
      continue;
    }
    if (name === "svg") sawSvg = true;
    if (!sawSvg) continue;
    const kept = parseAttributes(attrs).filter(([k]) => ATTRIBUTES.has(k.toLowerCase()));
    if (name === "svg" && width === null) width = naturalWidth(kept);
    const classes = (kept.find(([k]) => k === "class")?.[1] ?? "").split(/\s+/).filter(Boolean);
    const state = kept.find(([k]) => k === "data-state")?.[1];
    const rest = kept.filter(([k]) => k !== "class" && k !== "data-state")
      .map(([k, v]) => ` ${k === "viewbox" ? "viewBox" : k}="${escapeHtml(v)}"`).join("");
    if (name === "g" && state !== undefined && classes.includes("state")) {
      text += `<g${rest}`;
      flush();
      parts.push({ state, classes: classes.filter((c) => !HIGHLIGHT.has(c)) });
      states.push(state);
      text += ">";
      continue;
    }
    const cls = classes.length ? ` class="${escapeHtml(classes.join(" "))}"` : "";
    const extra = name === "svg" ? ' xmlns="http://www.w3.org/2000/svg"' : "";
    text += `<${name}${extra}${cls}${rest}${selfClosing ? "/" : ""}>`;
  }
  flush();
  if (!sawSvg) throw new Error("not an SVG document");
  return { parts, states, width };
}

/** Width in CSS px of an `<svg>` from its attributes: `619pt`, `400px`, `400`, or viewBox. */
function naturalWidth(attrs: [string, string][]): number | null {
  const get = (k: string) => attrs.find(([a]) => a.toLowerCase() === k)?.[1];
  const m = /^\s*([\d.]+)\s*(pt|px)?\s*$/.exec(get("width") ?? "");
  if (m) return Number(m[1]) * (m[2] === "pt" ? 4 / 3 : 1);
  const box = (get("viewbox") ?? "").trim().split(/[\s,]+/).map(Number);
  return box.length === 4 && Number.isFinite(box[2]) ? box[2] : null;
}

/** Active paths plus every ancestor of them (`a.b.c` → `a`, `a.b`). */
function ancestorsOf(active: string[]): Set<string> {
  const out = new Set<string>();
  for (const path of active) {
    const keys = path.split(".");
    for (let i = 1; i < keys.length; i++) out.add(keys.slice(0, i).join("."));
  }
  return out;
}

/**
 * Serializes a chart with `active` states (dot-joined key paths) highlighted through their
 * class lists; `label` becomes the picture's accessible name.
 */
export function highlightChart(
  template: ChartTemplate,
  active: string[],
  options: { label: string },
): string {
  const on = new Set(active);
  const above = ancestorsOf(active);
  let out = "";
  let labelled = false;
  for (const part of template.parts) {
    if (typeof part !== "string") {
      const classes = [...part.classes];
      if (on.has(part.state)) classes.push("active");
      else if (above.has(part.state)) classes.push("active-ancestor");
      out += ` class="${escapeHtml(classes.join(" "))}" data-state="${escapeHtml(part.state)}"`;
      continue;
    }
    if (!labelled && part.includes("<svg")) {
      // The picture is named by the actor and its state; its titles stay as tooltips.
      out += part.replace(
        "<svg",
        `<svg role="img" aria-label="${escapeHtml(options.label)}" focusable="false"`,
      );
      labelled = true;
      continue;
    }
    out += part;
  }
  return out;
}
