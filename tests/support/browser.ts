/**
 * Headless Debian Chromium for the browser tests (playwright-core drives it; no browser is
 * downloaded): one set of flags for a machine without network, so no background connection
 * hangs a test.
 * @module
 */
import { type Browser, chromium } from "playwright-core";

/** Chromium flags for a machine without network: no background connections to hang on. */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Launches /usr/bin/chromium headless; close it with `browser.close()`. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
}
