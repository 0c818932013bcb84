/**
 * The review console in headless Chromium against two running instances: a person signs in
 * with an operator account first (the login form; screenshots of it and of the console are
 * kept in tests/artifacts/), the page goes live, a transition on the other instance moves
 * the highlighted state in the drawn statechart, with JavaScript disabled the sign-in and
 * the server-rendered page still work, and an account without the role is turned away.
 */
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { launchChromium } from "../support/browser.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { ROOT, until } from "../support/instance.ts";
import { ADMIN_HEADERS } from "../support/auth.ts";
import { type ConsoleNode, createAccount, fragileSpec, startConsoleNode } from "./support.ts";

/** Where the screenshots are kept (gitignored). */
const SCREENSHOT = `${ROOT}tests/artifacts/console.png`;
const SCREENSHOT_24 = `${ROOT}tests/artifacts/console-24.png`;
const HISTORY_SCREENSHOT = `${ROOT}tests/artifacts/console-history.png`;
const REPORT = `${ROOT}tests/artifacts/report.html`;
const REPORT_SCREENSHOT = `${ROOT}tests/artifacts/report.png`;
const LOGIN_SCREENSHOT = `${ROOT}tests/artifacts/login.png`;

/** The operator who signs in. */
const OPERATOR = { username: "ops", password: "operator password 1", role: "operator" } as const;

/** Fill of a highlighted state (console.css `--hl-fill`). */
const HIGHLIGHT = "rgb(253, 230, 138)";

/**
 * A page expression (a string: this file is type-checked without the DOM library) that
 * finds the chart node of `state` in the drawn chart, when it is actor `path` on `instance`.
 */
function stateNode(instance: string, path: string, state: string): string {
  const args = JSON.stringify([instance, path, state]);
  return `(() => {
    const [instance, path, state] = ${args};
    const panel = document.querySelector("[data-chart-panel]");
    const figure = panel && panel.dataset.instance === instance && panel.dataset.path === path
      ? panel.querySelector("figure.actor")
      : null;
    const node = [...(figure ? figure.querySelectorAll("[data-state]") : [])]
      .find((n) => n.getAttribute("data-state") === state);
    return { figure, node };
  })()`;
}

/** Whether `state` is highlighted in the chart of `path` on `instance`, and its state text. */
async function highlighted(
  page: Page,
  instance: string,
  path: string,
  state: string,
): Promise<{ found: boolean; active: boolean; text: string | null; fill: string | null }> {
  return await page.evaluate(`(() => {
    const { figure, node } = ${stateNode(instance, path, state)};
    const shape = node ? node.querySelector("path, polygon, ellipse") : null;
    return {
      found: !!node,
      active: node ? node.classList.contains("active") : false,
      text: figure ? figure.querySelector("[data-actor-state]").textContent : null,
      fill: shape ? getComputedStyle(shape).fill : null,
    };
  })()`);
}

/**
 * Polls a page expression until it is truthy. (Playwright's waitForFunction evaluates
 * strings with eval inside the page, which the console's Content-Security-Policy forbids;
 * `page.evaluate` goes through the debugger protocol instead.)
 */
async function waitFor(page: Page, expression: string, what: string, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await page.evaluate(expression))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The state text of the matrix cell of actor `path` on `instance`, or null. */
async function cellText(page: Page, instance: string, path: string): Promise<string | null> {
  const args = JSON.stringify([instance, path]);
  return await page.evaluate(`(() => {
    const [instance, path] = ${args};
    const row = [...document.querySelectorAll("tr[data-instance]")]
      .find((r) => r.dataset.instance === instance);
    const cell = row && [...row.querySelectorAll("td[data-path]")]
      .find((c) => c.dataset.path === path);
    const out = cell && cell.querySelector("[data-actor-state]");
    return out ? out.textContent : null;
  })()`);
}

/** Clicks the matrix cell of actor `path` on `instance` and waits for its chart. */
async function openChart(page: Page, instance: string, path: string): Promise<void> {
  const row = page.locator("tr[data-instance]").filter({
    has: page.locator(`th .inst-id`, { hasText: instance }),
  });
  await row.locator(`td[data-path="${path}"] a`).click();
  await waitFor(
    page,
    `(() => { const p = document.querySelector("[data-chart-panel]");
      return !!p && p.dataset.instance === ${JSON.stringify(instance)} &&
        p.dataset.path === ${JSON.stringify(path)} && !!p.querySelector("svg"); })()`,
    `the chart of ${instance}/${path}`,
  );
}

/** Signs in through the login form the console sends a person without a session to. */
async function signIn(page: Page, url: string, account = OPERATOR): Promise<void> {
  await page.goto(`${url}/`);
  assert.equal(new URL(page.url()).pathname, "/login", "a person without a session signs in first");
  await page.fill("#login", account.username);
  await page.fill("#password", account.password);
  await Promise.all([page.waitForURL((u) => u.pathname !== "/login"), page.click("button")]);
}

/** Waits until `state` is highlighted in the chart of `path` on `instance`. */
async function waitForHighlight(page: Page, instance: string, path: string, state: string) {
  await waitFor(
    page,
    `(() => { const { node } = ${stateNode(instance, path, state)};
      return !!node && node.classList.contains("active"); })()`,
    `${state} highlighted on ${instance}`,
  );
}

/** Waits until the page says it follows `instance` live. */
async function waitForLive(page: Page, instance: string) {
  await waitFor(
    page,
    `(() => {
      const section = [...document.querySelectorAll("tr[data-instance]")]
        .find((s) => s.dataset.instance === ${JSON.stringify(instance)});
      return !!section && !!section.querySelector('[data-conn][data-state="live"]');
    })()`,
    `${instance} live`,
  );
}

Deno.test("review console in a browser", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const databaseUrl = await pg.createDatabase();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-console-browser-" });
  const nodes: ConsoleNode[] = [];
  const browser = await launchChromium();
  try {
    nodes.push(await startConsoleNode("node-a", { databaseUrl, dataDir, redisUrl: redis.url }));
    nodes.push(
      await startConsoleNode("node-b", {
        databaseUrl,
        dataDir,
        redisUrl: redis.url,
        env: { RS_MAX_RESTARTS: "0" },
        actors: [fragileSpec],
      }),
    );
    const [a] = nodes;
    await until(async () => {
      const body = await (await fetch(`${a.url}/cluster`, { headers: ADMIN_HEADERS })).json();
      return body.members.length === 2;
    }, { what: "both instances in /cluster" });
    await createAccount(a, OPERATOR);
    await createAccount(a, { username: "viewer", password: "viewer password 1", role: "user" });

    await t.step("the matrix goes live; a cell opens its statechart, which follows", async () => {
      // Reduced motion: no colour transitions, so computed colours are final at once.
      const page = await browser.newPage({
        viewport: { width: 1440, height: 900 },
        reducedMotion: "reduce",
      });
      const errors: string[] = [];
      page.on("pageerror", (err) => errors.push(err.message));
      // Content-Security-Policy violations and failed loads are reported as console errors.
      page.on("console", (msg) => {
        if (msg.type() === "error") errors.push(`${msg.text()} (${msg.location().url})`);
      });
      await page.goto(`${a.url}/`);
      assert.equal(new URL(page.url()).pathname, "/login");
      await page.fill("#login", OPERATOR.username);
      await page.fill("#password", "not the password");
      await page.click("button");
      assert.match(await page.locator("[role=alert]").innerText(), /Wrong username or password/);
      await Deno.mkdir(`${ROOT}tests/artifacts`, { recursive: true });
      await page.screenshot({ path: LOGIN_SCREENSHOT });
      console.log(`login screenshot: ${LOGIN_SCREENSHOT}`);
      await page.fill("#password", OPERATOR.password);
      await Promise.all([page.waitForURL((u) => u.pathname === "/"), page.click("button")]);
      assert.match(await page.locator(".viewer").innerText(), /Signed in as ops \(operator\)/);
      // The refused password's 401 was the browser's console error, not the console's.
      errors.length = 0;
      await page.waitForSelector('[data-live][data-state="live"]');
      for (const id of ["node-a", "node-b"]) await waitForLive(page, id);
      assert.ok(!(await page.evaluate(`!!document.querySelector("figure")`)), "no chart dump");
      assert.equal(await cellText(page, "node-b", "supervisor"), "supervising.healthy");
      // The cell's chart is fetched in place (no reload: the page stays live).
      await openChart(page, "node-b", "supervisor");
      assert.equal(new URL(page.url()).search, "?instance=node-b&actor=supervisor");
      const before = await highlighted(page, "node-b", "supervisor", "supervising.healthy");
      assert.deepEqual(before, {
        found: true,
        active: true,
        text: "supervising.healthy",
        fill: HIGHLIGHT,
      });

      // A message from node-a crashes node-b's actor; node-b's supervisor gives it up.
      await a.rt.transport.send({ instance: "node-b", actor: "fragile" }, { type: "crash" });
      await waitForHighlight(page, "node-b", "supervisor", "supervising.degraded");
      assert.equal(await cellText(page, "node-b", "supervisor"), "supervising.degraded");
      const after = await highlighted(page, "node-b", "supervisor", "supervising.healthy");
      assert.deepEqual(after, {
        found: true,
        active: false,
        text: "supervising.degraded",
        fill: "rgb(255, 255, 255)",
      });
      // node-a's own supervisor did not move.
      assert.equal(await cellText(page, "node-a", "supervisor"), "supervising.healthy");
      // Filtering by state keeps the rows with a matching actor, in place.
      await page.fill('[data-filters] input[name="state"]', "degraded");
      assert.deepEqual(
        await page.evaluate(
          `[...document.querySelectorAll("tr[data-instance]:not([hidden])")]
            .map((r) => r.dataset.instance)`,
        ),
        ["node-b"],
      );
      assert.match(page.url(), /state=degraded/);
      await page.fill('[data-filters] input[name="state"]', "");
      const row = await page.locator("[data-timeline] tr", {
        hasText: "xstate.error.actor.fragile",
      }).first().innerText();
      assert.match(
        row,
        /node-b\s+supervisor\s+xstate\.error\.actor\.fragile\s+supervising\.degraded/,
      );
      assert.deepEqual(errors, []);

      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      console.log(`console screenshot: ${SCREENSHOT}`);
      await page.close();
    });

    await t.step("without JavaScript the server-rendered page shows it all", async () => {
      const context = await browser.newContext({ javaScriptEnabled: false });
      const page = await context.newPage();
      // Signing in is a plain form: it works without JavaScript too.
      await signIn(page, a.url);
      // A cell is a plain link: the chart is drawn by the server.
      await page.locator('tr[data-instance="node-b"] td[data-path="supervisor"] a').click();
      assert.equal(new URL(page.url()).searchParams.get("actor"), "supervisor");
      const ids = await page.evaluate(
        `[...document.querySelectorAll("tr[data-instance]")].map((s) => s.dataset.instance)`,
      );
      assert.deepEqual(ids, ["node-a", "node-b"]);
      const b = await highlighted(page, "node-b", "supervisor", "supervising.degraded");
      // The highlight is the stylesheet's doing (by class), not the script's.
      assert.deepEqual(b, {
        found: true,
        active: true,
        text: "supervising.degraded",
        fill: HIGHLIGHT,
      });
      assert.equal(await cellText(page, "node-a", "supervisor"), "supervising.healthy");
      assert.match(await page.locator("[data-live]").innerText(), /live updates need JavaScript/);
      // The filter form is a plain GET form.
      await page.fill('[data-filters] input[name="state"]', "degraded");
      await page.locator("[data-filters] button").click();
      assert.equal(new URL(page.url()).searchParams.get("state"), "degraded");
      assert.deepEqual(
        await page.evaluate(
          `[...document.querySelectorAll("tr[data-instance]:not([hidden])")]
            .map((r) => r.dataset.instance)`,
        ),
        ["node-b"],
      );
      assert.ok(await page.locator("[data-timeline] tr").count() > 0);
      assert.match(
        await page.locator("#panel-backups").innerText(),
        /No backups yet\.[\s\S]*from \/backups/,
      );
      await context.close();
    });

    await t.step("time travel: step to the recorded crash, then export the range", async () => {
      // The recorded history (every instance's transitions, Redis server clock) holds the
      // moment node-b's supervisor gave up.
      const entries = await until(async () => {
        const res = await fetch(`${a.url}/history?limit=5000`, { headers: ADMIN_HEADERS });
        const body = await res.json() as { entries: Record<string, unknown>[] };
        return body.entries.some((e) =>
          e.instance === "node-b" && e.path === "supervisor" &&
          JSON.stringify(e.state).includes("degraded")
        ) && body.entries;
      }, { what: "the crash in the recorded history" });
      const gaveUp = entries.find((e) =>
        e.instance === "node-b" && e.path === "supervisor" &&
        JSON.stringify(e.state).includes("degraded")
      )!.serverAt as number;
      const from = entries[0].serverAt as number;
      const page = await browser.newPage({
        viewport: { width: 1440, height: 900 },
        reducedMotion: "reduce",
        acceptDownloads: true,
      });
      await signIn(page, a.url);
      const q = new URLSearchParams({
        from: String(from),
        at: String(gaveUp - 1),
        concern: "supervisor",
        instance: "node-b",
        actor: "supervisor",
      });
      await page.goto(`${a.url}/?${q}`);
      assert.equal(await page.getAttribute("body", "data-mode"), "history");
      // Just before: node-b was healthy, in the matrix and in its chart.
      assert.equal(await cellText(page, "node-b", "supervisor"), "supervising.healthy");
      assert.equal(
        (await highlighted(page, "node-b", "supervisor", "supervising.healthy")).active,
        true,
      );
      // One event on (stepping over the supervisor concern): the moment it gave up.
      await Promise.all([page.waitForURL(/at=/), page.click("a[data-step=next]")]);
      assert.equal(Number(new URL(page.url()).searchParams.get("at")), gaveUp);
      assert.equal(await cellText(page, "node-b", "supervisor"), "supervising.degraded");
      // The chart is drawn after the page: wait for its state to be filled, then look at it.
      await until(
        async () =>
          (await highlighted(page, "node-b", "supervisor", "supervising.degraded")).fill ===
            "rgb(253, 230, 138)",
        { what: "node-b's degraded state filled in its chart" },
      );
      const then = await highlighted(page, "node-b", "supervisor", "supervising.degraded");
      assert.deepEqual(then, {
        found: true,
        active: true,
        text: "supervising.degraded",
        fill: HIGHLIGHT,
      });
      // node-a was healthy all along; the page is not live (nothing moves a past moment).
      assert.equal(await cellText(page, "node-a", "supervisor"), "supervising.healthy");
      assert.match(await page.locator("[data-live]").innerText(), /Recorded history/);
      // The range's messages as a sequence diagram: node-a's crash message to node-b.
      const arrows = await page.locator("#messages svg.sequence g.msg title").allTextContents();
      assert.ok(
        arrows.some((a) => /from node-a\/runtime to node-b\/fragile: crash/.test(a)),
        arrows.join("\n"),
      );
      await page.screenshot({ path: HISTORY_SCREENSHOT, fullPage: true });
      console.log(`history screenshot: ${HISTORY_SCREENSHOT}`);
      // Back one event: healthy again.
      await Promise.all([page.waitForURL(/at=/), page.click("a[data-step=prev]")]);
      assert.ok(Number(new URL(page.url()).searchParams.get("at")) < gaveUp);
      assert.equal(await cellText(page, "node-b", "supervisor"), "supervising.healthy");

      // Export the range up to the crash, and open the file from disk: no cluster needed.
      await page.goto(
        `${a.url}/?${new URLSearchParams({ from: String(from), at: String(gaveUp) })}`,
      );
      const [download] = await Promise.all([
        page.waitForEvent("download"),
        page.click("a[data-export]"),
      ]);
      await download.saveAs(REPORT);
      await page.close();
      const offline = await browser.newContext({
        javaScriptEnabled: false,
        offline: true,
        viewport: { width: 1440, height: 900 },
      });
      const report = await offline.newPage();
      await report.goto(`file://${REPORT}`);
      assert.match(await report.title(), /RootStream report/);
      assert.equal(await cellText(report, "node-b", "supervisor"), "supervising.degraded");
      const reportArrows = await report.locator("svg.sequence g.msg title").allTextContents();
      assert.ok(reportArrows.some((a) => /node-b\/fragile: crash/.test(a)));
      // The chart of node-b's supervisor, highlighted where it ended the range.
      const drawn = await report.evaluate(`(() => {
        const panel = [...document.querySelectorAll("[data-chart-panel]")]
          .find((p) => p.dataset.instance === "node-b" && p.dataset.path === "supervisor");
        const node = panel && panel.querySelector('[data-state="supervising.degraded"]');
        const shape = node && node.querySelector("path, polygon, ellipse");
        return shape ? getComputedStyle(shape).fill : null;
      })()`);
      assert.equal(drawn, HIGHLIGHT, "the stylesheet travels inside the report");
      assert.ok(await report.locator("[data-timeline] tr").count() > 0);
      await report.screenshot({ path: REPORT_SCREENSHOT, fullPage: true });
      console.log(`report: ${REPORT}, screenshot ${REPORT_SCREENSHOT}`);
      await offline.close();
    });

    await t.step("an account without the operator role is turned away", async () => {
      const page = await browser.newPage();
      await signIn(page, a.url, { username: "viewer", password: "viewer password 1" } as never);
      const res = await page.goto(`${a.url}/`);
      assert.equal(res?.status(), 403);
      assert.match(await page.locator("main").innerText(), /role user/);
      await page.close();
    });

    await t.step("an instance that leaves disappears from the live page", async () => {
      const page = await browser.newPage();
      await signIn(page, a.url);
      await waitForLive(page, "node-b");
      await nodes[1].stop();
      await waitFor(
        page,
        `![...document.querySelectorAll("tr[data-instance]")]
          .some((s) => s.dataset.instance === "node-b")`,
        "node-b's section to go",
      );
      assert.equal(await page.locator("[data-instance-count]").innerText(), "1 live instance");
      await page.close();
    });

    await t.step("24 instances: one matrix, fast to paint, light to load", async () => {
      // 23 lean instances (the core concern only) join node-a: 24 rows in the matrix.
      const lean: Promise<ConsoleNode>[] = [];
      for (let n = 1; n <= 23; n++) {
        const id = `lean-${String(n).padStart(2, "0")}`;
        lean.push(
          startConsoleNode(id, { databaseUrl, dataDir, redisUrl: redis.url, concerns: {} }),
        );
      }
      for (const node of await Promise.all(lean)) nodes.push(node);
      await until(async () => {
        const res = await fetch(`${a.url}/cluster`, { headers: ADMIN_HEADERS });
        return (await res.json()).members.length === 24;
      }, { what: "24 instances in /cluster" });
      const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
      await signIn(page, a.url);
      // The console reads the member list through a cache of up to a second
      // (CLUSTER_VIEW_TTL_MS), so it may list the 24 a moment after /cluster does.
      await until(async () => {
        await page.goto(`${a.url}/?instance=node-a&actor=supervisor`);
        return await page.locator("tr[data-instance]").count() === 24;
      }, { what: "the console's matrix to list 24 instances" });
      // A fresh load, measured by the browser itself.
      await page.goto(`${a.url}/?instance=node-a&actor=supervisor`);
      await page.waitForSelector('[data-live][data-state="live"]');
      const rows = await page.locator("tr[data-instance]").count();
      assert.equal(rows, 24);
      const figures = await page.evaluate(`(() => {
        const nav = performance.getEntriesByType("navigation")[0];
        const paint = performance.getEntriesByName("first-contentful-paint")[0];
        const resources = performance.getEntriesByType("resource")
          .filter((r) => !r.name.includes("/console/events"));
        return {
          firstContentfulPaintMs: Math.round(paint ? paint.startTime : -1),
          htmlBytes: nav.decodedBodySize,
          responseMs: Math.round(nav.responseEnd - nav.requestStart),
          pageBytes: nav.decodedBodySize +
            resources.reduce((sum, r) => sum + (r.decodedBodySize || 0), 0),
          domNodes: document.getElementsByTagName("*").length,
          heightPx: document.documentElement.scrollHeight,
        };
      })()`) as Record<string, number>;
      console.log(JSON.stringify({ instances: 24, ...figures }));
      assert.ok(figures.firstContentfulPaintMs >= 0, "the browser reports a first paint");
      // Weight and height are bounded by the matrix, not by charts × instances.
      assert.ok(figures.htmlBytes < 400_000, `HTML of ${figures.htmlBytes} bytes`);
      assert.ok(figures.domNodes < 6000, `${figures.domNodes} elements`);
      await page.screenshot({ path: SCREENSHOT_24, fullPage: true });
      console.log(`console screenshot at 24 instances: ${SCREENSHOT_24}`);
      await page.close();
    });
  } finally {
    await browser.close();
    for (const node of nodes.reverse()) await node.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
