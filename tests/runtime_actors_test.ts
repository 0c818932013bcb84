/**
 * The actor runtime inside one instance: supervision of a real (crashing) actor,
 * /actors and its event stream, charts with the live state, and the local transport
 * of a single instance without Redis.
 */
import assert from "node:assert/strict";
import { fragileSpec } from "./support/fragile_actor.ts";
import { isRuntimeError } from "../lib/errors.ts";
import { loadConfig } from "../concerns/config.ts";
import { startRuntime } from "../runtime.ts";
import { startPostgres } from "./harness/mod.ts";
import { until } from "./support/instance.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN } from "./support/auth.ts";

/** Reads a server-sent event stream, one event at a time. */
function eventReader(body: ReadableStream<Uint8Array>) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const seen: { event: string; data: unknown }[] = [];
  async function next(): Promise<{ event: string; data: unknown }> {
    let i;
    while ((i = buf.indexOf("\n\n")) < 0) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`the stream ended; seen ${JSON.stringify(seen).slice(0, 500)}`);
      buf += value;
    }
    const chunk = buf.slice(0, i);
    buf = buf.slice(i + 2);
    const event = /^event: (.*)$/m.exec(chunk)?.[1] ?? "message";
    const data = JSON.parse(/^data: (.*)$/m.exec(chunk)?.[1] ?? "null");
    seen.push({ event, data });
    return { event, data };
  }
  return { next, seen, cancel: () => reader.cancel() };
}

Deno.test("actor runtime in one instance (no Redis)", async (t) => {
  await using pg = await startPostgres();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-actors-" });
  const config = loadConfig({
    env: {
      DATABASE_URL: await pg.createDatabase(),
      RS_SECRET_KEY: btoa(String.fromCharCode(...new Uint8Array(32).fill(1))),
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      RS_PORT: "0",
      RS_DATA_DIR: dataDir,
      RS_INSTANCE_ID: "solo",
      RS_MAX_RESTARTS: "2",
      RS_RESTART_WINDOW_S: "60",
    },
    args: [],
  });
  const rt = await startRuntime(config, { actors: [fragileSpec] });
  const to = { instance: "solo", actor: "fragile" };
  try {
    await t.step("the local transport delivers to this instance and refuses others", async () => {
      await rt.transport.send(to, { type: "ping" });
      await until(() => rt.inspector.get("fragile")?.status === "active", {
        what: "the fragile actor active in the inspector",
      });
      const pong = await rt.transport.request<{ instance: string }>(
        { instance: "solo", actor: "diagnostics" },
        { type: "diag.ping" },
      );
      assert.equal(pong.instance, "solo");
      const err = await rt.transport.send({ instance: "elsewhere", actor: "fragile" }, {
        type: "ping",
      }).then(() => null, (e) => e);
      assert.ok(isRuntimeError(err, "CLUSTER_UNAVAILABLE"));
      const cluster = await (await fetch(`${rt.url}/cluster`, { headers: ADMIN_HEADERS })).json();
      assert.equal(cluster.mode, "single-instance");
      assert.deepEqual(cluster.members.map((m: { id: string }) => m.id), ["solo"]);
    });

    await t.step("/actors/stream sends the snapshot, then each transition", async () => {
      // The abort bounds every read below: a transition that never comes fails the step.
      const res = await fetch(`${rt.url}/actors/stream`, {
        headers: ADMIN_HEADERS,
        signal: AbortSignal.timeout(30_000),
      });
      assert.equal(res.headers.get("content-type"), "text/event-stream");
      const events = eventReader(res.body!);
      try {
        // `hello` is written once the feed is subscribed: from here on nothing is missed.
        const hello = await events.next();
        assert.equal(hello.event, "hello");
        const actors = (hello.data as { actors: { path: string }[] }).actors;
        assert.ok(actors.some((a) => a.path === "supervisor/diagnostics"));
        await rt.transport.send(to, { type: "crash" });
        // The supervisor's view changes with the event that reported the failure.
        while (true) {
          const e = JSON.stringify(await events.next());
          if (
            e.includes('"event":"snapshot"') && e.includes('"event":"xstate.error.actor.fragile"')
          ) break;
        }
      } finally {
        await events.cancel().catch(() => {});
      }
    });

    await t.step("a crashed actor is restarted alone; the process carries on", async () => {
      await until(() =>
        rt.supervisor.children().fragile.status === "running" &&
        rt.supervisor.children().fragile.generation === 2, {
        what: "fragile restarted (generation 2)",
        state: () => rt.supervisor.children().fragile,
      });
      assert.equal(rt.supervisor.children().diagnostics.generation, 1, "siblings untouched");
      const health = await (await fetch(`${rt.url}/health`, { headers: ADMIN_HEADERS })).json();
      assert.equal(health.checks.actors.state, "healthy");
    });

    await t.step(
      "past the restart intensity the actor is given up and health degrades",
      async () => {
        for (let i = 0; i < 2; i++) {
          await until(() => !!rt.supervisor.ref("fragile"), { what: "fragile running" });
          await rt.transport.send(to, { type: "crash" });
          await until(() => rt.supervisor.children().fragile.recentFailures === i + 2, {
            what: `the supervisor counting failure ${i + 2} of fragile`,
            state: () => rt.supervisor.children().fragile,
          });
        }
        await until(() => rt.supervisor.children().fragile.status === "failed", {
          what: "the supervisor giving up fragile",
          state: () => rt.supervisor.children().fragile,
        });
        const res = await fetch(`${rt.url}/health`, { headers: ADMIN_HEADERS });
        const health = await res.json();
        assert.equal(res.status, 200);
        assert.equal(health.status, "degraded");
        assert.equal(health.checks.actors.state, "degraded");
        assert.match(health.checks.actors.reason, /gave up fragile because it failed 3 times/);
        const actors = await (await fetch(`${rt.url}/actors`, { headers: ADMIN_HEADERS })).json();
        assert.equal(actors.supervisor.children.fragile.status, "failed");
      },
    );

    await t.step("charts are served with the live state highlighted", async () => {
      const res = await fetch(`${rt.url}/charts/supervisor.svg`, { headers: ADMIN_HEADERS });
      assert.equal(res.status, 200);
      const svg = await res.text();
      assert.match(svg, /id="state-supervising\.degraded"[^>]*class="[^"]*active/);
      const missing = await fetch(`${rt.url}/charts/nope.svg`, { headers: ADMIN_HEADERS });
      assert.equal(missing.status, 404);
      await missing.body?.cancel();
    });
  } finally {
    await rt.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
