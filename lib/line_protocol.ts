/**
 * InfluxDB line protocol: one escaped line per point, so no measurement name, tag or field
 * key can split a line, start a new point or turn into a comment.
 *
 * Escaping follows the v2 rules (InfluxDB 2.x / 3.x, VictoriaMetrics): in measurements a
 * comma, space or backslash is prefixed with a backslash; in tag keys, tag values and field
 * keys also `=`. Newline, carriage return and tab become `\n`, `\r`, `\t` and other control
 * characters `\xNN`, which the servers store as visible text: a value can never start a new
 * line. A measurement starting with `#` (a comment marker at the start of a line) is
 * written, and stored, as `\#…`. InfluxDB 1.x reads backslashes differently (it keeps `\\` as two characters and
 * rejects a tag value ending in one), so values with backslashes round-trip exactly only
 * on v2-compatible servers.
 *
 * Fields are written as floats (no `i` suffix), so a field never changes type between
 * points; non-finite values are left out and a point without any finite field is invalid.
 *
 * @example
 * ```ts
 * formatPoint({ measurement: "stream_viewers", tags: { stream_id: "7" }, fields: { count: 150 }, time: 1700000000000 });
 * // => "stream_viewers,stream_id=7 count=150 1700000000000"
 * ```
 * @module
 */

/** One point: measurement, tags, numeric fields and a time in milliseconds since the epoch. */
export interface MetricPoint {
  /** Measurement name (any text; escaped on output). */
  measurement: string;
  /** Tags; empty, null and undefined values are left out (line protocol has no empty tags). */
  tags?: Readonly<Record<string, string | number | null | undefined>>;
  /** Numeric fields; non-finite, null and undefined values are left out. */
  fields: Readonly<Record<string, number | null | undefined>>;
  /** Milliseconds since the epoch (write with precision `ms`). */
  time: number;
}

// deno-lint-ignore no-control-regex
const MEASUREMENT_SPECIAL = /[, \\\x00-\x1f\x7f]/;
// deno-lint-ignore no-control-regex
const KEY_SPECIAL = /[,= \\\x00-\x1f\x7f]/;
// deno-lint-ignore no-control-regex
const MEASUREMENT_ALL = /[, \\\x00-\x1f\x7f]/g;
// deno-lint-ignore no-control-regex
const KEY_ALL = /[,= \\\x00-\x1f\x7f]/g;

function replaceSpecial(ch: string): string {
  switch (ch) {
    case "\n":
      return "\\n";
    case "\r":
      return "\\r";
    case "\t":
      return "\\t";
    case ",":
    case "=":
    case " ":
    case "\\":
      return "\\" + ch;
    default:
      return "\\x" + ch.charCodeAt(0).toString(16).padStart(2, "0");
  }
}

// deno-lint-ignore no-control-regex
const CONTROL_ALL = /[\x00-\x1f\x7f]/g;

/**
 * The text a v2-compatible server stores for `text` written through this module: control
 * characters become their visible escapes (`\n`, `\t`, `\xNN`), everything else is kept.
 * Readers apply it to names and tag values so they find what the writer wrote.
 */
export function storedText(text: string): string {
  return text.replace(CONTROL_ALL, replaceSpecial);
}

/**
 * The measurement name a server stores for `name`: like {@linkcode storedText}, and a
 * leading `#` (which would make the line a comment) keeps the backslash that escapes it.
 */
export function storedMeasurement(name: string): string {
  const text = storedText(name);
  return text.startsWith("#") ? "\\" + text : text;
}

/** Escapes a measurement name; a leading `#` (a comment marker) is escaped too. */
export function escapeMeasurement(name: string): string {
  const escaped = MEASUREMENT_SPECIAL.test(name)
    ? name.replace(MEASUREMENT_ALL, replaceSpecial)
    : name;
  return escaped.startsWith("#") ? "\\" + escaped : escaped;
}

/** Escapes a tag key, tag value or field key. */
export function escapeKey(text: string): string {
  return KEY_SPECIAL.test(text) ? text.replace(KEY_ALL, replaceSpecial) : text;
}

/** Formats a field value: finite numbers only, as a float; null for anything else. */
export function formatFieldValue(value: number | null | undefined): string | null {
  if (typeof value !== "number" || !Number.isFinite(value)) return null;
  return value === 0 ? "0" : String(value);
}

// Keys and measurement names repeat from point to point: escape each once, and keep the
// separators with them (",key=", " key=") so a line takes few concatenations.
const CACHE_LIMIT = 4096;

interface Cache {
  /** A dictionary, not a Map: V8 looks internalised property names up faster. */
  entries: Record<string, string>;
  size: number;
  make: (text: string) => string;
}

function newCache(make: (text: string) => string): Cache {
  return { entries: Object.create(null), size: 0, make };
}

function cached(cache: Cache, text: string): string {
  const hit = cache.entries[text];
  if (hit !== undefined) return hit;
  const value = cache.make(text);
  if (cache.size < CACHE_LIMIT) {
    cache.entries[text] = value;
    cache.size++;
  }
  return value;
}

const TAG_PREFIX = newCache((key) => "," + escapeKey(key) + "=");
const FIRST_FIELD_PREFIX = newCache((key) => " " + escapeKey(key) + "=");
const FIELD_PREFIX = newCache((key) => "," + escapeKey(key) + "=");
const MEASUREMENT_CACHE = newCache(escapeMeasurement);

/** True when a tag value needs escaping (a loop beats a regex on short values). */
function needsEscape(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c <= 32 || c === 44 || c === 61 || c === 92 || c === 127) return true;
  }
  return false;
}

/**
 * Formats one point as a line (no trailing newline), or returns null when it cannot be
 * written: empty measurement, no finite field, or a time that is not a safe integer of ms.
 */
export function formatPoint(point: MetricPoint): string | null {
  const measurement = point.measurement;
  if (typeof measurement !== "string" || measurement === "") return null;
  const time = Math.trunc(point.time);
  if (!Number.isSafeInteger(time)) return null;
  let line = cached(MEASUREMENT_CACHE, measurement);
  const tags = point.tags;
  if (tags) {
    for (const key in tags) {
      const raw = tags[key];
      if (raw === null || raw === undefined || key === "") continue;
      const value = typeof raw === "string" ? raw : String(raw);
      if (value === "") continue;
      line += cached(TAG_PREFIX, key) +
        (needsEscape(value) ? value.replace(KEY_ALL, replaceSpecial) : value);
    }
  }
  let first = true;
  const fields = point.fields;
  for (const key in fields) {
    const value = fields[key];
    if (typeof value !== "number" || !Number.isFinite(value) || key === "") continue;
    line += cached(first ? FIRST_FIELD_PREFIX : FIELD_PREFIX, key) + (value === 0 ? "0" : value);
    first = false;
  }
  if (first) return null;
  return line + " " + time;
}

/**
 * Formats points and appends the valid lines to `out`; returns how many points were
 * invalid (and left out).
 */
export function formatPoints(points: readonly MetricPoint[], out: string[]): number {
  let invalid = 0;
  for (let i = 0; i < points.length; i++) {
    const line = formatPoint(points[i]);
    if (line === null) invalid++;
    else out.push(line);
  }
  return invalid;
}
