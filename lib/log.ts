/**
 * Structured logging: one line per record to stderr, text or JSON.
 *
 * Loggers are cheap, named children of a root whose level and format come from config.
 * @module
 */

/** Log levels in increasing severity. */
export type LogLevel = "debug" | "info" | "warn" | "error";
/** Output format of log lines. */
export type LogFormat = "text" | "json";

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** A named logger; `fields` are appended as key=value (text) or merged (JSON). */
export interface Logger {
  /** Debug detail, off by default. */
  debug(msg: string, fields?: Record<string, unknown>): void;
  /** Normal operation. */
  info(msg: string, fields?: Record<string, unknown>): void;
  /** Something is wrong but the runtime carries on. */
  warn(msg: string, fields?: Record<string, unknown>): void;
  /** An operation failed. */
  error(msg: string, fields?: Record<string, unknown>): void;
  /** A logger for a sub-component, named `parent.name`. */
  child(name: string): Logger;
}

/** Where and how records are written; tests pass `sink` to capture lines. */
export interface LogOptions {
  /** Minimum level written. */
  level?: LogLevel;
  /** Line format. */
  format?: LogFormat;
  /** Receives each formatted line; defaults to stderr. */
  sink?: (line: string) => void;
  /** Clock for timestamps (injected so tests control it). */
  now?: () => number;
}

const encoder = new TextEncoder();

function writeStderr(line: string): void {
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
}

function formatValue(v: unknown): string {
  if (v instanceof Error) return JSON.stringify(v.message);
  if (typeof v === "string") return /^[\w.:/@+-]*$/.test(v) && v !== "" ? v : JSON.stringify(v);
  return JSON.stringify(v) ?? String(v);
}

/** Creates the root logger. */
export function createLogger(name: string, options: LogOptions = {}): Logger {
  const level = options.level ?? "info";
  const format = options.format ?? "text";
  const sink = options.sink ?? writeStderr;
  const now = options.now ?? Date.now;
  function write(lvl: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    if (ORDER[lvl] < ORDER[level]) return;
    const ts = new Date(now()).toISOString();
    if (format === "json") {
      const rec: Record<string, unknown> = { ts, level: lvl, logger: name, msg };
      for (const [k, v] of Object.entries(fields ?? {})) {
        rec[k] = v instanceof Error ? v.message : v;
      }
      sink(JSON.stringify(rec));
      return;
    }
    const extra = Object.entries(fields ?? {})
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k}=${formatValue(v)}`)
      .join(" ");
    sink(`${ts} ${lvl.toUpperCase().padEnd(5)} [${name}] ${msg}${extra ? " " + extra : ""}`);
  }
  return {
    debug: (m, f) => write("debug", m, f),
    info: (m, f) => write("info", m, f),
    warn: (m, f) => write("warn", m, f),
    error: (m, f) => write("error", m, f),
    child: (child) => createLogger(`${name}.${child}`, options),
  };
}

/** A logger that discards everything (library default). */
export const silentLogger: Logger = createLogger("silent", { sink: () => {} });
