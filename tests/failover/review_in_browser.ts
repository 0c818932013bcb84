/**
 * The recorded kill -9 failover reviewed in headless Chromium, the way docs/console.md tells a
 * reviewer to: open the console just before the promotion with the failover concern picked,
 * step with "next event ▶", and see each instance's failover cell in the state the recorded
 * history says it was in at that step: `detector.promoting` on the promoting instance at the
 * promotion's step, `pool.switching` on every instance at its re-pointing's step, in order.
 * Called by tests/failover/failover_test.ts's kill -9 step, on its cluster (no second one).
 * @module
 */
import assert from "node:assert/strict";
import { launchChromium } from "../support/browser.ts";
import { ROOT } from "../support/instance.ts";
import { ADMIN_HEADERS } from "../support/auth.ts";
import { formatState } from "../../console/html.ts";

/** One transition of GET /history. */
export type Entry = Record<string, unknown>;

/** Where the screenshot of the promotion is kept (gitignored; docs/console/ has a copy). */
export const PROMOTING_SCREENSHOT = `${ROOT}tests/artifacts/failover-promoting.png`;

/** Steps taken at most (the range is a second or two of failover transitions). */
const MAX_STEPS = 200;

/**
 * Steps through the recorded failover in the console of `url`.
 * `failover` is the failover machine's recorded transitions in order (GET /history),
 * `promoting` the promotion among them and `repointed` each instance's re-pointing after it.
 */
export async function reviewFailoverInBrowser(options: {
  url: string;
  failover: Entry[];
  promoting: Entry;
  repointed: Record<string, Entry>;
}): Promise<void> {
  const { url, failover, promoting, repointed } = options;
  const path = String(promoting.path);
  const start = (promoting.serverAt as number) - 1;
  const last = Math.max(...Object.values(repointed).map((e) => failover.indexOf(e)));
  // The steps the console must take: every failover transition (of any instance) from the
  // promotion's millisecond on, one by one, up to the last re-pointing.
  const first = failover.findIndex((e) => (e.serverAt as number) > start);
  const expected = failover.slice(first, last + 1);
  assert.ok(first >= 0 && expected.includes(promoting), JSON.stringify({ first, last }));
  const browser = await launchChromium();
  try {
    // The operator's bearer token on every request (the console accepts it as GET /history does).
    const context = await browser.newContext({
      viewport: { width: 1000, height: 800 },
      reducedMotion: "reduce",
      extraHTTPHeaders: { ...ADMIN_HEADERS },
    });
    const page = await context.newPage();
    const q = new URLSearchParams({
      from: String(start - 2_000),
      at: String(start),
      concern: "failover",
      instance: String(promoting.instance),
      actor: path,
    });
    await page.goto(`${url}/?${q}`);
    assert.equal(await page.getAttribute("body", "data-mode"), "history");
    /** Each instance's failover cell's full state text, at the page's moment. */
    const cells = async (): Promise<Record<string, string | null>> =>
      await page.evaluate(`(() => {
        const out = {};
        for (const row of document.querySelectorAll("tr[data-instance]")) {
          const cell = [...row.querySelectorAll("td[data-path]")]
            .find((c) => c.dataset.path === ${JSON.stringify(path)});
          out[row.dataset.instance] = cell ? cell.getAttribute("data-state-text") : null;
        }
        return out;
      })()`);
    const ids = [...new Set(failover.map((e) => String(e.instance)))].sort();
    /** What the recorded history says each instance's failover actor was in after entry `i`. */
    const recordedAfter = (i: number): Record<string, string | null> =>
      Object.fromEntries(ids.map((id) => {
        const last = failover.slice(0, i + 1).findLast((e) => e.instance === id && e.path === path);
        return [id, last ? formatState(last.state) : null];
      }));
    const before = await cells();
    assert.deepEqual(before, recordedAfter(first - 1), "just before the promotion's millisecond");
    assert.doesNotMatch(before[String(promoting.instance)] ?? "", /detector\.promoting/);
    const seen: string[] = [];
    /** Each instance's cells at each step. */
    const shown: Record<string, string | null>[] = [];
    let position = `${start}-null`;
    while (seen.length < expected.length && seen.length < MAX_STEPS) {
      const next = page.locator("a[data-step=next]");
      assert.equal(await next.count(), 1, `a next event after ${position}`);
      const from = position;
      await Promise.all([
        page.waitForURL((u) => `${u.searchParams.get("at")}-${u.searchParams.get("seq")}` !== from),
        next.click(),
      ]);
      const u = new URL(page.url());
      position = `${u.searchParams.get("at")}-${u.searchParams.get("seq")}`;
      seen.push(position);
      const i = seen.length - 1;
      const entry = expected[i];
      assert.equal(position, entry.entryId, `step ${seen.length}: ${seen.join(", ")}`);
      const now = await cells();
      shown.push(now);
      // Every instance's cell, at every step, is what was recorded by then: nothing early,
      // nothing late, nothing of another instance.
      assert.deepEqual(now, recordedAfter(first + i), `step ${seen.length} (${position})`);
      if (entry === promoting) {
        assert.match(now[String(promoting.instance)] ?? "", /detector\.promoting/);
        assert.equal(
          await page.locator(`[data-chart-panel] [data-state="detector.promoting"].active`).count(),
          1,
          "the promoting instance's chart highlights detector.promoting",
        );
        // From the top of the page (time control, matrix) down to the highlighted state.
        const box = await page.locator(
          `[data-chart-panel] [data-state="detector.promoting"].active`,
        ).boundingBox();
        assert.ok(box, "the promoting state is drawn");
        await page.screenshot({
          path: PROMOTING_SCREENSHOT,
          fullPage: true,
          clip: { x: 0, y: 0, width: 1000, height: Math.ceil(box.y + box.height + 24) },
        });
        console.log(`failover promotion screenshot: ${PROMOTING_SCREENSHOT}`);
      }
      for (const [id, e] of Object.entries(repointed)) {
        if (entry === e) {
          assert.match(now[id] ?? "", /pool\.switching/, `${id} at its re-pointing ${position}`);
        }
      }
    }
    assert.deepEqual(seen, expected.map((e) => e.entryId), "every recorded step, in order");
    // In order: the promotion, then every instance's pool switching at its own step.
    const steps = (id: string, re: RegExp) =>
      shown.flatMap((cells, i) => re.test(cells[id] ?? "") ? [i] : []);
    const promoted = expected.indexOf(promoting);
    assert.ok(steps(String(promoting.instance), /detector\.promoting/).includes(promoted));
    const switched: Record<string, number> = {};
    for (const [id, e] of Object.entries(repointed)) {
      switched[id] = expected.indexOf(e);
      assert.ok(steps(id, /pool\.switching/).includes(switched[id]), id);
      assert.ok(switched[id] > promoted, `${id} re-points after the promotion`);
    }
    console.log(
      `failover stepped in Chromium: ${seen.length} events, ${promoting.instance} promoting at ` +
        `step ${promoted}, pool.switching at steps ${JSON.stringify(switched)}`,
    );
    await context.close();
  } finally {
    await browser.close();
  }
}
