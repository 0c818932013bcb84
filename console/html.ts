/**
 * Escaping and small formatting helpers shared by the console's renderers. Every value a
 * renderer puts in the page goes through {@linkcode escapeHtml} (text and attributes).
 * @module
 */
import { activeStatePaths } from "../lib/charts.ts";

const ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

/** Escapes text for HTML content and quoted attribute values. */
export function escapeHtml(value: unknown): string {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** A state value as text: `idle`, or `running.a.x, running.b.y` for nested values. */
export function formatState(value: unknown): string {
  if (value === undefined || value === null) return "—";
  if (typeof value === "string") return value;
  const paths = activeStatePaths(value);
  return paths.length ? paths.join(", ") : JSON.stringify(value);
}

/** A short, single-line rendering of a summary value (JSON for objects), cut at `max`. */
export function formatValue(value: unknown, max = 120): string {
  let text: string;
  if (typeof value === "string") text = value;
  else if (value === undefined) text = "—";
  else {
    try {
      text = JSON.stringify(value) ?? String(value);
    } catch {
      text = String(value);
    }
  }
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** UTC wall-clock time of `ms` as `HH:MM:SS.mmm`, or "—" for a missing time. */
export function formatClock(ms: number | null | undefined): string {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "—";
  return new Date(ms).toISOString().slice(11, 23);
}

/** A `<time>` element for `ms` (UTC clock as text, ISO instant as its datetime). */
export function timeTag(ms: number | null | undefined): string {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "—";
  return `<time datetime="${escapeHtml(new Date(ms).toISOString())}">${
    escapeHtml(formatClock(ms))
  }</time>`;
}

/** A number with a unit chosen from a metric-style name (`_bytes`, `_seconds`). */
export function formatQuantity(value: number, unit: "bytes" | "seconds" | "ratio" | ""): string {
  if (!Number.isFinite(value)) return String(value);
  if (unit === "bytes") {
    const steps = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Math.abs(value);
    let i = 0;
    while (v >= 1024 && i < steps.length - 1) {
      v /= 1024;
      i++;
    }
    return `${value < 0 ? "-" : ""}${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${
      steps[i]
    }`;
  }
  if (unit === "seconds") {
    const a = Math.abs(value);
    if (a === 0) return "0 s";
    if (a < 1e-3) return `${(value * 1e6).toFixed(0)} µs`;
    if (a < 1) return `${(value * 1e3).toFixed(a < 0.01 ? 2 : 0)} ms`;
    if (a < 120) return `${value.toFixed(a < 10 ? 2 : 1)} s`;
    return `${(value / 60).toFixed(1)} min`;
  }
  if (unit === "ratio") return `${(value * 100).toFixed(1)} %`;
  const a = Math.abs(value);
  if (a !== 0 && (a >= 1e6 || a < 1e-2)) return value.toPrecision(3);
  return Number.isInteger(value) ? String(value) : value.toFixed(a < 10 ? 2 : 1);
}

/** FNV-1a hash of a string as 8 hex digits: stable element ids from arbitrary instance ids. */
export function slug(value: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < value.length; i++) {
    h ^= value.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}
