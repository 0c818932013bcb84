/**
 * The Prometheus text exposition format (version 0.0.4): `# HELP`, `# TYPE` and one line
 * per sample, with metric and label names sanitised to `[a-zA-Z_:][a-zA-Z0-9_:]*` and
 * label values and help text escaped, so no value can break a line or add a sample.
 * @module
 */

/** Content type of the exposition. */
export const EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** One sample line. */
export interface PromSample {
  /** Full sample name (the family name, or it plus `_sum` / `_count` for summaries). */
  name: string;
  /** Labels. */
  labels?: Record<string, string>;
  /** Value. */
  value: number;
}

/** One metric family. */
export interface PromFamily {
  /** Family name. */
  name: string;
  /** Help text. */
  help: string;
  /** Prometheus type. */
  type: "gauge" | "counter" | "summary" | "untyped";
  /** Samples. */
  samples: PromSample[];
}

/** A valid metric name made from any text (invalid characters become `_`). */
export function promName(text: string): string {
  const cleaned = text.replace(/[^a-zA-Z0-9_:]/g, "_");
  return /^[a-zA-Z_:]/.test(cleaned) ? cleaned : "_" + cleaned;
}

/** `pendingRequests` → `pending_requests`: Prometheus names are snake_case. */
export function snakeCase(text: string): string {
  return text.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase();
}

/** A valid label name (no `:`; `__` prefixes are reserved, so they are replaced). */
export function promLabelName(text: string): string {
  const cleaned = text.replace(/[^a-zA-Z0-9_]/g, "_");
  const valid = /^[a-zA-Z_]/.test(cleaned) ? cleaned : "_" + cleaned;
  return valid.startsWith("__") ? "x" + valid : valid;
}

/** Escapes a label value: backslash, double quote and newline. */
export function escapeLabelValue(text: string): string {
  return text.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : "\\" + c));
}

function escapeHelp(text: string): string {
  return text.replace(/[\\\n]/g, (c) => (c === "\n" ? "\\n" : "\\\\"));
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

/** Renders families; families with the same name are merged, empty ones left out. */
export function renderExposition(families: readonly PromFamily[]): string {
  const merged = new Map<string, PromFamily>();
  for (const f of families) {
    const name = promName(f.name);
    const existing = merged.get(name);
    if (existing) existing.samples.push(...f.samples);
    else merged.set(name, { ...f, name, samples: [...f.samples] });
  }
  const lines: string[] = [];
  for (const f of merged.values()) {
    if (!f.samples.length) continue;
    lines.push(`# HELP ${f.name} ${escapeHelp(f.help)}`);
    lines.push(`# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      const labels = Object.entries(s.labels ?? {})
        .map(([k, v]) => `${promLabelName(k)}="${escapeLabelValue(String(v))}"`)
        .join(",");
      lines.push(`${promName(s.name)}${labels ? `{${labels}}` : ""} ${formatValue(s.value)}`);
    }
  }
  return lines.length ? lines.join("\n") + "\n" : "";
}
