/**
 * The actor runtime inside one instance: supervision of a real (crashing) actor,
 * /actors and its event stream, charts with the live state, and the local transport
 * of a single instance without Redis.
 */
import assert from "node:assert/strict";
import { fragileSpec } from "./support/fragile_actor.ts";
import { isRuntimeError } from "../lib/errors.ts";
import { loadConfig } from "../lib/config.ts";
import { startRuntime } from "../runtime.ts";
import { startPostgres } from "./harness/mod.ts";
import { until } from "./support/instance.ts";

async function readEvents(body: ReadableStream<Uint8Array>, want: (e: string) => boolean) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const seen: { event: string; data: unknown }[] = [];
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const event = /^event: (.*)$/m.exec(chunk)?.[1] ?? "message";
      const data = JSON.parse(/^data: (.*)$/m.exec(chunk)?.[1] ?? "null");
      seen.push({ event, data });
      if (want(JSON.stringify({ event, data }))) {
        await reader.cancel();
        return seen;
      }
    }
  }
  await reader.cancel();
  throw new Error(`expected event not seen; got ${JSON.stringify(seen).slice(0, 500)}`);
}

Deno.test("actor runtime in one instance (no Redis)", async (t) => {
  await using pg = await startPostgres();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-actors-" });
  const config = loadConfig({
    env: {
      DATABASE_URL: await pg.createDatabase(),
      RS_SECRET_KEY: btoa(String.fromCharCode(...new Uint8Array(32).fill(1))),
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
      await until(() => rt.inspector.get("fragile")?.status === "active");
      const pong = await rt.transport.request<{ instance: string }>(
        { instance: "solo", actor: "diagnostics" },
        { type: "diag.ping" },
      );
      assert.equal(pong.instance, "solo");
      const err = await rt.transport.send({ instance: "elsewhere", actor: "fragile" }, {
        type: "ping",
      }).then(() => null, (e) => e);
      assert.ok(isRuntimeError(err, "CLUSTER_UNAVAILABLE"));
      const cluster = await (await fetch(`${rt.url}/cluster`)).json();
      assert.equal(cluster.mode, "single-instance");
      assert.deepEqual(cluster.members.map((m: { id: string }) => m.id), ["solo"]);
    });

    await t.step("/actors/stream sends the snapshot, then each transition", async () => {
      const res = await fetch(`${rt.url}/actors/stream`);
      assert.equal(res.headers.get("content-type"), "text/event-stream");
      // The supervisor's view changes with the event that reported the failure.
      const events = readEvents(
        res.body!,
        (e) =>
          e.includes('"event":"snapshot"') && e.includes('"event":"xstate.error.actor.fragile"'),
      );
      await new Promise((r) => setTimeout(r, 100));
      await rt.transport.send(to, { type: "crash" });
      const seen = await events;
      assert.equal(seen[0].event, "hello");
      const hello = seen[0].data as { actors: { path: string }[] };
      assert.ok(hello.actors.some((a) => a.path === "supervisor/diagnostics"));
    });

    await t.step("a crashed actor is restarted alone; the process carries on", async () => {
      await until(() =>
        rt.supervisor.children().fragile.status === "running" &&
        rt.supervisor.children().fragile.generation === 2, { what: "restart" });
      assert.equal(rt.supervisor.children().diagnostics.generation, 1, "siblings untouched");
      const health = await (await fetch(`${rt.url}/health`)).json();
      assert.equal(health.checks.actors.state, "healthy");
    });

    await t.step(
      "past the restart intensity the actor is given up and health degrades",
      async () => {
        for (let i = 0; i < 2; i++) {
          await until(() => !!rt.supervisor.ref("fragile"), { what: "fragile running" });
          await rt.transport.send(to, { type: "crash" });
          await until(() => rt.supervisor.children().fragile.recentFailures === i + 2);
        }
        await until(() => rt.supervisor.children().fragile.status === "failed");
        const res = await fetch(`${rt.url}/health`);
        const health = await res.json();
        assert.equal(res.status, 200);
        assert.equal(health.status, "degraded");
        assert.equal(health.checks.actors.state, "degraded");
        assert.match(health.checks.actors.reason, /gave up fragile because it failed 3 times/);
        const actors = await (await fetch(`${rt.url}/actors`)).json();
        assert.equal(actors.supervisor.children.fragile.status, "failed");
      },
    );

    await t.step("charts are served with the live state highlighted", async () => {
      const res = await fetch(`${rt.url}/charts/supervisor.svg`);
      assert.equal(res.status, 200);
      const svg = await res.text();
      assert.match(svg, /id="state-supervising\.degraded"[^>]*class="[^"]*active/);
      const missing = await fetch(`${rt.url}/charts/nope.svg`);
      assert.equal(missing.status, 404);
      await missing.body?.cancel();
    });
  } finally {
    await rt.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
