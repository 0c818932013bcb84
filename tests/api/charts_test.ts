import assert from "node:assert/strict";
import type { OpenAPIHono } from "@hono/zod-openapi";
import { createActor, setup } from "xstate";
import { addChartRoutes } from "../../api/core/charts.ts";
import { renderSvg, toMermaid } from "../../lib/charts.ts";
import { ADMIN_HEADERS, testApp } from "../support/auth.ts";

/** A lease holder: a compound state with a guarded renewal loop and a final state. */
const lease = setup({
  types: { events: {} as { type: "ACQUIRE" } | { type: "LOST" } | { type: "RELEASE" } },
  guards: { quorum: () => true },
  delays: { RENEW_EVERY: 1000 },
}).createMachine({
  id: "lease",
  initial: "follower",
  states: {
    follower: { on: { ACQUIRE: { guard: "quorum", target: "leader" } } },
    leader: {
      initial: "holding",
      on: { LOST: "follower", RELEASE: "released" },
      states: {
        holding: { after: { RENEW_EVERY: "renewing" } },
        renewing: { after: { 200: "holding" } },
      },
    },
    released: { type: "final" },
  },
});

/** Paths of the states the SVG marks `active` (not merely `active-ancestor`). */
function activeClasses(svg: string): string[] {
  return [...svg.matchAll(/<g id="state-([^"]*)" class="([^"]*)"/g)]
    .filter((m) => m[2].split(" ").includes("active"))
    .map((m) => m[1]);
}

async function svgOf(app: OpenAPIHono, path = "/charts/lease.svg"): Promise<string> {
  const res = await app.request(path, { headers: ADMIN_HEADERS });
  assert.equal(res.status, 200);
  return await res.text();
}

Deno.test("chart routes", async (t) => {
  await t.step("the svg highlights the running actor's current state", async () => {
    const actor = createActor(lease).start();
    try {
      const app = testApp();
      addChartRoutes(app, {
        machines: { lease },
        activeState: (name) => name === "lease" ? actor.getSnapshot().value : undefined,
      });
      const res = await app.request("/charts/lease.svg", { headers: ADMIN_HEADERS });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("content-type"), "image/svg+xml; charset=utf-8");
      const svg = await res.text();
      assert.ok(svg.includes("<svg"));
      assert.deepEqual(activeClasses(svg), ["follower"]);

      actor.send({ type: "ACQUIRE" });
      const moved = await svgOf(app);
      assert.deepEqual(activeClasses(moved), ["leader.holding"]);
      assert.match(moved, /<g id="state-leader" class="cluster state compound active-ancestor"/);
    } finally {
      actor.stop();
    }
  });

  await t.step("a state already drawn comes from the bounded cache", async () => {
    let current: unknown = "follower";
    const rendered: string[][] = [];
    const app = testApp();
    addChartRoutes(app, {
      machines: { lease },
      activeState: () => current,
      cacheSize: 2,
      render: (machine, options) => {
        rendered.push(options?.active ?? []);
        return renderSvg(machine, options);
      },
    });
    const first = await svgOf(app);
    assert.equal(await svgOf(app), first, "same bytes for the same state");
    assert.deepEqual(rendered, [["follower"]], "drawn once");
    current = { leader: "holding" };
    assert.deepEqual(activeClasses(await svgOf(app)), ["leader.holding"]);
    current = "released";
    assert.deepEqual(activeClasses(await svgOf(app)), ["released"]);
    assert.equal(rendered.length, 3);
    // Three states through a cache of two: the least recently used one was dropped.
    current = "follower";
    assert.equal(await svgOf(app), first);
    assert.deepEqual(rendered.at(-1), ["follower"]);
    assert.equal(rendered.length, 4);
    current = "released";
    await svgOf(app);
    assert.equal(rendered.length, 4, "the most recent states stay cached");
  });

  await t.step("the mermaid text is served as plain text", async () => {
    const app = testApp();
    addChartRoutes(app, { machines: { lease }, activeState: () => undefined });
    const res = await app.request("/charts/lease.mmd", { headers: ADMIN_HEADERS });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "text/plain; charset=utf-8");
    const text = await res.text();
    assert.equal(text, toMermaid(lease));
    assert.ok(text.includes("s_follower --> s_leader : ACQUIRE [quorum]"));
    assert.ok(text.includes("s_leader_holding --> s_leader_renewing : after RENEW_EVERY (1000ms)"));
  });

  await t.step("unknown charts and extensions are 404 with a JSON error", async () => {
    const app = testApp();
    addChartRoutes(app, { machines: { lease }, activeState: () => undefined });
    for (
      const path of [
        "/charts/nope.svg",
        "/charts/lease.png",
        "/charts/lease",
        "/charts/toString.svg",
      ]
    ) {
      const res = await app.request(path, { headers: ADMIN_HEADERS });
      assert.equal(res.status, 404, path);
      const body = await res.json();
      assert.equal(body.error.code, "NOT_FOUND");
      assert.match(body.error.message, /No chart named/);
    }
  });

  await t.step("charts are for operators: anonymous callers get 401", async () => {
    const app = testApp();
    addChartRoutes(app, { machines: { lease }, activeState: () => undefined });
    const res = await app.request("/charts/lease.svg");
    assert.equal(res.status, 401);
    assert.equal((await res.json()).error.code, "UNAUTHORIZED");
  });

  await t.step("a machine with no running actor is drawn without highlight", async () => {
    const app = testApp();
    addChartRoutes(app, { machines: { lease }, activeState: () => undefined });
    const svg = await svgOf(app);
    assert.deepEqual(activeClasses(svg), []);
    assert.match(svg, /<g id="state-follower" class="node state atomic" data-state="follower">/);
  });
});
