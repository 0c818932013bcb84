/**
 * The chart diff SVG (`deno task charts --diff`) as a reviewer sees it, in headless Chromium:
 * removed states and transitions are struck through and red, added ones green, changed ones
 * orange. The screenshot is kept in tests/artifacts/chart-diff.png.
 */
import assert from "node:assert/strict";
import { launchChromium } from "../support/browser.ts";
import { diffCharts } from "../../lib/charts.ts";
import { ROOT } from "../support/instance.ts";
import { MACHINES as BEFORE } from "../fixtures/chart_diff/before.ts";
import { MACHINES as AFTER } from "../fixtures/chart_diff/after.ts";

const SCREENSHOT = `${ROOT}tests/artifacts/chart-diff.png`;

Deno.test("the chart diff svg in a browser", async () => {
  const { svg } = (await diffCharts(BEFORE.door, AFTER.door, { subtitle: "changes since main" }))!;
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 400 } });
    await page.setContent(`<!doctype html><body style="margin:0">${svg}</body>`);
    const looks = await page.evaluate(`(() => {
      const look = (title) => {
        const g = [...document.querySelectorAll("g")]
          .find((x) => x.querySelector(":scope > title")?.textContent === title);
        const text = g && g.querySelector("text");
        const shape = g && g.querySelector("path, polygon, ellipse");
        return text ? {
          decoration: getComputedStyle(text).textDecorationLine,
          text: text.getAttribute("fill"),
          stroke: shape && shape.getAttribute("stroke"),
        } : null;
      };
      return {
        removed: look("locked"),
        removedEdge: look("closed->locked"),
        added: look("ajar"),
        changed: look("open"),
        same: look("closed"),
      };
    })()`) as Record<string, { decoration: string; text: string; stroke: string } | null>;
    assert.equal(looks.removed?.decoration, "line-through");
    assert.equal(looks.removed?.stroke, "#b91c1c");
    assert.equal(looks.removedEdge?.decoration, "line-through");
    assert.equal(looks.added?.decoration, "none");
    assert.equal(looks.added?.stroke, "#15803d");
    assert.equal(looks.changed?.stroke, "#c2410c");
    assert.equal(looks.same?.decoration, "none");
    assert.equal(looks.same?.stroke, "#475569");
    await Deno.mkdir(`${ROOT}tests/artifacts`, { recursive: true });
    await page.screenshot({ path: SCREENSHOT, timeout: 60_000 });
    console.log(`chart diff screenshot: ${SCREENSHOT}`);
  } finally {
    await browser.close();
  }
});
