/**
 * Live statechart routes: `GET /charts/:name.svg` draws a machine with the current state
 * of the actor running it highlighted; `GET /charts/:name.mmd` is its Mermaid text.
 *
 * Rendering through Graphviz costs milliseconds, and a review page polls, so SVGs are
 * cached per (machine, active states) in a small LRU map; a machine has few states, so the
 * map stays warm. Operators only: the highlighted state is the runtime's internals.
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { AnyStateMachine } from "xstate";
import { RuntimeError } from "../../lib/errors.ts";
import {
  activeStatePaths,
  type renderSvg,
  renderSvgOffThread,
  toMermaid,
} from "../../lib/charts.ts";
import { declareRoute, serve } from "../authz/mod.ts";

/** What the chart routes need from the runtime. */
export interface ChartRouteDeps {
  /** Machines by chart name (normally `MACHINES` from machines/mod.ts). */
  machines: Record<string, AnyStateMachine>;
  /** Current state value of the actor running that machine, or undefined when none runs. */
  activeState: (name: string) => unknown;
  /** Most SVGs kept (default 64). */
  cacheSize?: number;
  /** Renders a chart (default `renderSvgOffThread`; tests count calls through it). */
  render?: typeof renderSvg;
}

const FILE = /^(.+)\.(svg|mmd)$/;

function notFound(c: Context, name: string): Response {
  const err = new RuntimeError("NOT_FOUND", `No chart named ${name}: unknown machine`);
  return c.json(err.toJSON(), 404);
}

/** The chart route's declaration. */
export const CHART_ROUTES = {
  chart: declareRoute({
    method: "get",
    path: "/charts/{file}",
    tags: ["cluster"],
    summary: "A statechart: `<machine>.svg` with the current state highlighted, or `.mmd`",
    access: { caller: "operator", scope: "cluster:read" },
    kind: "asset",
    request: {
      params: z.object({
        file: z.string().max(200).openapi({ example: "supervisor.svg" }),
      }),
    },
    responses: {
      200: {
        description: "The chart",
        content: {
          "image/svg+xml": { schema: z.string() },
          "text/plain": { schema: z.string() },
        },
      },
      404: {
        description: "No such machine (NOT_FOUND)",
        content: { "application/json": { schema: z.looseObject({}) } },
      },
    },
  }),
};

/** Adds `GET /charts/:name.svg` (current state highlighted) and `GET /charts/:name.mmd`. */
export function addChartRoutes(app: OpenAPIHono, deps: ChartRouteDeps): void {
  const limit = Math.max(1, deps.cacheSize ?? 64);
  // Graphviz in a worker: a render never stops the event loop (and /health/live with it).
  const render = deps.render ?? renderSvgOffThread;
  // Keyed by name + active paths; the machine is kept to notice a replaced definition.
  // Promises are cached so concurrent requests for one picture render it once.
  const cache = new Map<string, { machine: AnyStateMachine; svg: Promise<string> }>();
  const mermaid = new WeakMap<AnyStateMachine, string>();

  function svgFor(name: string, machine: AnyStateMachine, active: string[]): Promise<string> {
    const key = `${name}\n${active.join("\n")}`;
    const hit = cache.get(key);
    if (hit && hit.machine === machine) {
      // Re-insert so Map order is least-recently-used first.
      cache.delete(key);
      cache.set(key, hit);
      return hit.svg;
    }
    const svg = render(machine, { active });
    cache.set(key, { machine, svg });
    // A failed render must not be served from the cache forever.
    svg.catch(() => {
      if (cache.get(key)?.svg === svg) cache.delete(key);
    });
    while (cache.size > limit) cache.delete(cache.keys().next().value!);
    return svg;
  }

  serve(app, CHART_ROUTES.chart, async (c) => {
    const { file } = c.req.valid("param");
    const match = file.match(FILE);
    const name = match?.[1] ?? file;
    const machine = match && Object.hasOwn(deps.machines, name) ? deps.machines[name] : undefined;
    if (!match || !machine) return notFound(c, name);
    c.header("cache-control", "no-store");
    if (match[2] === "mmd") {
      let text = mermaid.get(machine);
      if (text === undefined) {
        text = toMermaid(machine);
        mermaid.set(machine, text);
      }
      c.header("content-type", "text/plain; charset=utf-8");
      return c.body(text);
    }
    const active = activeStatePaths(deps.activeState(name));
    const svg = await svgFor(name, machine, active);
    c.header("content-type", "image/svg+xml; charset=utf-8");
    return c.body(svg);
  });
}
