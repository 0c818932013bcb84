/**
 * The review console over HTTP: the server-rendered page of one instance and of a
 * two-instance cluster, escaping of everything an actor reports, concern panels present
 * and absent, fragments, and the merged live event stream.
 */
import assert from "node:assert/strict";
import { z } from "zod";
import { setup } from "xstate";
import type { ActorSpec, RemoteEvent } from "../../actors/runtime/types.ts";
import { startPostgres } from "../harness/mod.ts";
import { until } from "../support/instance.ts";
import { ADMIN_HEADERS } from "../support/auth.ts";
import { type ReadEvent, type SseReader, sseReader } from "../support/sse.ts";
import { fragileSpec, readEvents, type SseEvent, startConsoleNode } from "./support.ts";

/** This test runs no sessions concern: the admin token reads as an operator. */
const OPERATOR = { headers: ADMIN_HEADERS };

/** An actor whose id, states and summary are full of markup. */
const EVIL_STATE = "<img src=x onerror=alert(1)>";
const evilMachine = setup({
  types: { events: {} as { type: "go" } },
}).createMachine({
  id: "evil<b>",
  initial: EVIL_STATE,
  states: { [EVIL_STATE]: { on: { go: "next" } }, next: {} },
});
const evilSpec: ActorSpec = {
  id: 'evil"<i>',
  create: () => evilMachine,
  summarize: () => ({ note: "</dd><script>alert(1)</script>" }),
  accepts: { go: z.object({ type: z.literal("go") }) as z.ZodType<RemoteEvent> },
};

/** Stands in for the sessions concern's actor: only its summary matters here. */
const sessionsSpec: ActorSpec = {
  id: "sessions",
  create: () =>
    setup({}).createMachine({ id: "sessions_stub", initial: "running", states: { running: {} } }),
  summarize: () => ({ loginsInProgress: 2, failures: 1 }),
};

/** Fake concern endpoints that answer 404 until switched on. */
function fakeConcerns(app: {
  get: (path: string, handler: (c: never) => Response) => unknown;
}): { on: boolean } {
  const state = { on: false };
  let messages = 100;
  const missing = () =>
    Response.json({ error: { code: "NOT_FOUND", message: "No route" } }, { status: 404 });
  app.get("/sessions/stats", () => state.on ? Response.json({ active: 12, total: 40 }) : missing());
  app.get("/backups", () =>
    state.on
      ? Response.json({
        backups: [
          {
            id: "<b>bk-1</b>",
            kind: "full",
            status: "verified",
            startedAt: "2025-01-01T10:00:00Z",
            sizeBytes: 3 * 1024 * 1024,
            verified: true,
          },
        ],
      })
      : missing());
  app.get("/replication", () =>
    state.on
      ? Response.json({
        nodes: [
          { name: "pg-1", role: "primary", state: "streaming", lagBytes: 0, lagSeconds: 0 },
          { name: "pg-2", role: "replica", state: "streaming", lagBytes: 2048, lagSeconds: 0.25 },
        ],
      })
      : Response.json({
        error: {
          code: "REPLICATION_UNAVAILABLE",
          message: "needs a PostgreSQL server with <streaming> replicas",
        },
      }, { status: 503 }));
  app.get("/metrics", () => {
    if (!state.on) return missing();
    messages += 50;
    return new Response(
      "# TYPE rootstream_stream_viewers gauge\nrootstream_stream_viewers 42\n" +
        `# TYPE rootstream_messages_total counter\nrootstream_messages_total ${messages}\n`,
      { headers: { "content-type": "text/plain; version=0.0.4" } },
    );
  });
  app.get(
    "/dashboards",
    () =>
      state.on ? Response.json({ dashboards: [{ name: "streams", title: "Streams" }] }) : missing(),
  );
  app.get("/dashboards/streams", () =>
    state.on
      ? Response.json({
        name: "streams",
        panels: [
          {
            id: "viewers",
            title: "Viewers per stream",
            unit: "viewers",
            series: [{
              label: "viewers",
              tags: { stream_id: "s1" },
              points: [[1700000000000, 3], [1700000300000, 5], [1700000600000, 4]],
            }],
          },
          { id: "fps", title: "Frames per second", unit: "fps", series: [], error: "timed out" },
        ],
      })
      : missing());
  return state;
}

function figure(html: string, path: string): string {
  const quoted = path.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const start = html.search(new RegExp(`<figure class="actor[^"]*" data-path="${quoted}"`));
  assert.ok(start >= 0, `figure for ${path}`);
  return html.slice(start, html.indexOf("</figure>", start));
}

/** The matrix cell of actor `path` on instance `instance`. */
function cell(html: string, instance: string, path: string): string {
  const row = html.indexOf(`<tr class="instance" data-instance="${instance}"`);
  assert.ok(row >= 0, `row for ${instance}`);
  const end = html.indexOf("</tr>", row);
  const at = html.indexOf(`data-path="${path}"`, row);
  assert.ok(at >= 0 && at < end, `cell for ${path}`);
  return html.slice(html.lastIndexOf("<td", at), html.indexOf("</td>", at));
}

/** `GET /` with the chart of `path` on `instance` drawn. */
async function pageWithChart(url: string, instance: string, path: string): Promise<string> {
  const q = new URLSearchParams({ instance, actor: path });
  const res = await fetch(`${url}/?${q}`, OPERATOR);
  assert.equal(res.status, 200);
  return await res.text();
}

function snapshotOf(instance: string, path: string, state: string) {
  return (e: SseEvent) => {
    const view = e.data.view as { path: string; state: unknown } | undefined;
    return e.event === "snapshot" && e.data.instance === instance && view?.path === path &&
      JSON.stringify(view.state).includes(state);
  };
}

Deno.test("review console of a single instance", async (t) => {
  await using pg = await startPostgres();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-console-" });
  let concerns = { on: false };
  const node = await startConsoleNode("solo", {
    databaseUrl: await pg.createDatabase(),
    dataDir,
    env: { RS_MAX_RESTARTS: "0" },
    // No concerns of the runtime's own: the panels' sources are the fakes below.
    concerns: {},
    actors: [fragileSpec, evilSpec, sessionsSpec],
    routes: (rt) => concerns = fakeConcerns(rt.app as never),
  });
  try {
    await t.step("the console is an operator view (finding 2)", async () => {
      // A person without a session is sent to the login form, and comes back after it.
      const page = await fetch(`${node.url}/`, { redirect: "manual" });
      assert.equal(page.status, 303);
      assert.equal(page.headers.get("location"), "/login?next=%2F");
      await page.body?.cancel();
      for (
        const path of [
          "/console/fragments/instances",
          "/console/fragments/instance?id=solo",
          "/console/fragments/panels",
          "/console/fragments/messages",
          "/console/events",
        ]
      ) {
        const res = await fetch(`${node.url}${path}`);
        assert.equal(res.status, 401, path);
        assert.equal((await res.json()).error.code, "UNAUTHORIZED", path);
      }
      // The stylesheet is public: the login form (the sessions concern's) uses it.
      const css = await fetch(`${node.url}/console/console.css`);
      assert.equal(css.status, 200);
      await css.body?.cancel();
    });

    await t.step("GET / is a matrix of actors; a cell's link draws that chart", async () => {
      const res = await fetch(`${node.url}/`, OPERATOR);
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type")!, /^text\/html/);
      assert.match(res.headers.get("content-security-policy")!, /script-src 'self'/);
      const page = await res.text();
      assert.match(page, /cluster mode <strong>single-instance<\/strong>/);
      // No chart is drawn until one is picked: the page stays small at any cluster size.
      assert.ok(!page.includes("<figure"), "no chart dump");
      const supCell = cell(page, "solo", "supervisor");
      assert.match(supCell, /data-actor-state>supervising\.healthy</);
      assert.match(supCell, /href="\/\?instance=solo&amp;actor=supervisor#chart"/);
      assert.match(cell(page, "solo", "supervisor/fragile"), /data-actor-state>up</);
      const html = await pageWithChart(node.url, "solo", "supervisor");
      assert.match(html, /<a [^>]*aria-current="true">/);
      const sup = figure(html, "supervisor");
      assert.match(sup, /data-actor-state>supervising\.healthy</);
      assert.match(sup, /<svg role="img" aria-label="Statechart of supervisor/);
      assert.match(sup, /class="node state atomic active" data-state="supervising\.healthy"/);
      assert.match(sup, /class="node state atomic" data-state="supervising\.degraded"/);
      assert.match(sup, /class="cluster state compound active-ancestor" data-state="supervising"/);
      assert.match(
        figure(
          await pageWithChart(node.url, "solo", "supervisor/diagnostics"),
          "supervisor/diagnostics",
        ),
        /data-state="ready"/,
      );
      // A machine the instance has no chart for is shown as text, with the reason.
      const fragile = figure(
        await pageWithChart(node.url, "solo", "supervisor/fragile"),
        "supervisor/fragile",
      );
      assert.match(fragile, /data-actor-state>up</);
      assert.match(fragile, /No chart: solo serves none for machine fragile\./);
      assert.match(fragile, /<dt>pings<\/dt><dd[^>]*>0<\/dd>/);
    });

    await t.step("values an actor reports cannot inject markup", async () => {
      const html = await pageWithChart(node.url, "solo", 'supervisor/evil"<i>');
      assert.ok(!html.includes("<script>alert"), "no script from a summary");
      assert.ok(!html.includes("<img src=x"), "no element from a state name");
      assert.ok(!html.includes("<b>bk-1"), "no element from a backup id");
      assert.ok(html.includes("&lt;img src=x onerror=alert(1)&gt;"), "state shown as text");
      assert.ok(html.includes("&lt;/dd&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
      assert.ok(html.includes('data-path="supervisor/evil&quot;&lt;i&gt;"'));
    });

    await t.step("absent concern endpoints are reported unavailable", async () => {
      const html = await (await fetch(`${node.url}/`, OPERATOR)).text();
      assert.ok(
        html.includes(
          "<strong>Unavailable</strong>: this instance does not serve <code>GET /backups</code>",
        ),
      );
      // A concern that answers 503 with a reason is unavailable for that reason.
      assert.ok(
        html.includes(
          "<strong>Unavailable</strong>: needs a PostgreSQL server with &lt;streaming&gt; replicas",
        ),
      );
      assert.ok(
        html.includes("<strong>Unavailable</strong>: no instance serves <code>GET /metrics</code>"),
      );
      // Without /sessions/stats the sessions actors' summaries are shown, and said to be.
      assert.match(html, /<dt>logins in progress<\/dt><dd>2<\/dd>/);
      assert.match(
        html,
        /This instance serves no GET \/sessions\/stats; these are the sessions actors&#39; summary figures, summed over 1 instance, and they include no count of open sessions\./,
      );
    });

    await t.step("present concern endpoints are shown, metrics as sparklines", async () => {
      concerns.on = true;
      // Counters become rates from their second sample on; samples are ≥ 2 s apart.
      let html = "";
      await until(async () => {
        const res = await fetch(`${node.url}/console/fragments/panels`, OPERATOR);
        assert.equal(res.status, 200);
        html = await res.text();
        return html.includes('aria-label="rootstream_messages_total: latest');
      }, { ms: 10_000, what: "a second metrics sample" });
      assert.match(html, /<dt>active<\/dt><dd>12<\/dd>/);
      assert.match(html, /&lt;b&gt;bk-1&lt;\/b&gt;/);
      assert.match(html, /3\.0 MiB/);
      assert.match(html, /<span class="badge ok">verified<\/span>/);
      assert.match(html, /pg-2<\/td><td><span class="badge role-replica">replica<\/span>/);
      assert.match(html, /250 ms/);
      assert.match(html, /<code title="rootstream_stream_viewers">stream_viewers<\/code>/);
      assert.match(html, /aria-label="rootstream_stream_viewers: latest 42/);
      assert.match(html, /aria-label="rootstream_messages_total: latest [\d.]+\/s/);
      assert.match(
        html,
        /Dashboard Streams <span class="muted">\(<a href="\/dashboards\/streams">\/dashboards\/streams<\/a>\)/,
      );
      assert.match(
        html,
        /aria-label="Viewers per stream: viewers \(stream_id=s1\): latest 4 viewers, range 3 viewers to 5 viewers over 3 samples"/,
      );
      assert.match(html, /Frames per second: timed out/);
      assert.ok(!html.includes("Unavailable"));
      concerns.on = false;
    });

    await t.step("the script, the stylesheet and the fragments are served", async () => {
      const js = await fetch(`${node.url}/console/console.js`);
      assert.match(js.headers.get("content-type")!, /^text\/javascript/);
      assert.match(await js.text(), /new EventSource\("\/console\/events"\)/);
      const css = await fetch(`${node.url}/console/console.css`);
      assert.match(css.headers.get("content-type")!, /^text\/css/);
      assert.match(await css.text(), /\.state\.active/);
      const one = await fetch(`${node.url}/console/fragments/instance?id=solo`, OPERATOR);
      assert.equal(one.status, 200);
      assert.match(await one.text(), /^<tr class="instance" data-instance="solo"/);
      const chart = await fetch(
        `${node.url}/console/fragments/chart?instance=solo&actor=supervisor`,
        OPERATOR,
      );
      assert.match(
        await chart.text(),
        /^<div data-chart-panel id="chart-[0-9a-f]{8}" data-instance="solo"[\s\S]*<svg/,
      );
      const missing = await fetch(
        `${node.url}/console/fragments/chart?instance=solo&actor=nobody`,
        OPERATOR,
      );
      assert.match(await missing.text(), /No actor nobody on a live instance named solo\./);
      const none = await fetch(`${node.url}/console/fragments/instance?id=nobody`, OPERATOR);
      assert.equal(none.status, 404);
      await none.body?.cancel();
      const messages = await fetch(`${node.url}/console/fragments/messages`, OPERATOR);
      assert.match(await messages.text(), /No correlated messages among the recent transitions/);
    });

    await t.step("/console/events sends the instance's actors, then each change", async () => {
      let crashed = false;
      const seen = await readEvents(
        `${node.url}/console/events`,
        (s) => s.some(snapshotOf("solo", "supervisor", "degraded")),
        {
          headers: ADMIN_HEADERS,
          onEvent: async (e) => {
            if (e.event === "hello" && !crashed) {
              crashed = true;
              await node.rt.transport.send({ instance: "solo", actor: "fragile" }, {
                type: "crash",
              });
            }
          },
        },
      );
      const names = seen.map((e) => e.event);
      assert.ok(names.indexOf("cluster") < names.indexOf("hello"), "members come first");
      assert.deepEqual(seen.find((e) => e.event === "upstream")?.data, {
        instance: "solo",
        connected: true,
      });
      const hello = seen.find((e) => e.event === "hello")!.data as {
        instance: string;
        actors: { path: string }[];
      };
      assert.equal(hello.instance, "solo");
      assert.ok(hello.actors.some((a) => a.path === "supervisor/fragile"));
      const change = seen.find(snapshotOf("solo", "supervisor", "degraded"))!.data as {
        transition: { event: string };
      };
      assert.equal(change.transition.event, "xstate.error.actor.fragile");
      // The page reads the cluster at most once a second (every viewer shares that reading).
      const html = await until(async () => {
        const page = await pageWithChart(node.url, "solo", "supervisor");
        return cell(page, "solo", "supervisor").includes("supervising.degraded") && page;
      }, { what: "the page showing the new state" });
      assert.match(figure(html, "supervisor"), /data-actor-state>supervising\.degraded</);
      assert.match(
        html,
        /<td>solo<\/td><td>supervisor<\/td><td><code>xstate\.error\.actor\.fragile<\/code>/,
      );
    });

    await t.step(
      "a viewer joining a watched console starts complete from the shared feed",
      async () => {
        // The first viewer starts the one feed of this member; the second joins it (finding 6:
        // no stream per viewer and member) and still gets the members, the member's status and
        // its actors before any change.
        const open = () => fetch(`${node.url}/console/events`, { headers: ADMIN_HEADERS });
        const first = sseReader(await open());
        const second: SseReader[] = [];
        try {
          while ((await first.next("the first viewer's hello")).event !== "hello") { /* on */ }
          second.push(sseReader(await open()));
          const names: string[] = [];
          let hello: ReadEvent | null = null;
          while (!hello) {
            const e = await second[0].next("the second viewer's hello");
            names.push(e.event);
            if (e.event === "hello") hello = e;
          }
          assert.ok(names.indexOf("cluster") < names.indexOf("hello"), names.join(","));
          assert.ok(names.includes("upstream"), names.join(","));
          assert.equal(hello.data.instance, "solo");
          const actors = hello.data.actors as { path: string }[];
          assert.ok(actors.some((a) => a.path === "supervisor/fragile"), "the member's actors");
        } finally {
          await first.cancel();
          for (const s of second) await s.cancel();
        }
      },
    );
  } finally {
    await node.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
