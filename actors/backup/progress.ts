/**
 * Progress of a long backup operation (create, verify, restore) a person can watch: the
 * phase, the bytes done of the bytes expected, the rate and the time left.
 *
 * The operations report {@linkcode ProgressEvent}s (phase and bytes); a
 * {@linkcode ProgressMeter} turns them into {@linkcode BackupProgress} snapshots with a
 * rate and an ETA (the API's backup records carry the latest one while a backup runs);
 * {@linkcode terminalProgress} draws them on one line of a terminal and stays quiet when
 * the output is not a terminal (scripts, logs, CI).
 * @module
 */

/** What an operation reports as it goes. */
export interface ProgressEvent {
  /** What it is doing (e.g. `dumping`, `unpacking 20251207-…-base`). */
  phase: string;
  /** Bytes of this phase done so far. */
  bytes: number;
  /** Bytes this phase expects in all (null when unknown, e.g. a dump's size). */
  total: number | null;
}

/** Receives progress events; must be cheap (called per read or write). */
export type ProgressListener = (event: ProgressEvent) => void;

/** A progress snapshot with rate and ETA. */
export interface BackupProgress {
  /** The current phase. */
  phase: string;
  /** Bytes of the phase done. */
  bytesDone: number;
  /** Bytes the phase expects (null when unknown). */
  bytesTotal: number | null;
  /** Bytes per second since the phase began. */
  bytesPerSecond: number;
  /** Seconds left in the phase (null when the total is unknown or no rate yet). */
  etaSeconds: number | null;
  /** When this snapshot was taken (ISO). */
  updatedAt: string;
}

/** Turns events into snapshots (rate since the phase began). */
export class ProgressMeter {
  #phase: string | null = null;
  #phaseStart = 0;
  #last: ProgressEvent | null = null;
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** Records an event. */
  update(event: ProgressEvent): void {
    if (event.phase !== this.#phase) {
      this.#phase = event.phase;
      this.#phaseStart = this.#now();
    }
    this.#last = event;
  }

  /** The latest snapshot, or null before the first event. */
  snapshot(): BackupProgress | null {
    const last = this.#last;
    if (!last) return null;
    const now = this.#now();
    const seconds = (now - this.#phaseStart) / 1000;
    const rate = seconds > 0 ? last.bytes / seconds : 0;
    const left = last.total === null ? null : Math.max(0, last.total - last.bytes);
    return {
      phase: last.phase,
      bytesDone: last.bytes,
      bytesTotal: last.total,
      bytesPerSecond: Math.round(rate),
      etaSeconds: left === null || rate <= 0 ? null : Math.round(left / rate),
      updatedAt: new Date(now).toISOString(),
    };
  }
}

/** `1.2 GB`, `512.0 MB`, `3.4 kB` (decimal units, as the benches report MB/s). */
export function formatBytes(bytes: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** `1 h 02 min`, `3 min 05 s`, `12 s`. */
export function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  if (s >= 3600) {
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  }
  if (s >= 60) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${s} s`;
}

/** One line for a person: `unpacking base  512.0 MB / 1.2 GB (42 %)  85.1 MB/s  ETA 8 s`. */
export function formatProgress(p: BackupProgress): string {
  const parts = [p.phase];
  if (p.bytesTotal !== null && p.bytesTotal > 0) {
    const percent = Math.min(100, Math.floor((p.bytesDone / p.bytesTotal) * 100));
    parts.push(`${formatBytes(p.bytesDone)} / ${formatBytes(p.bytesTotal)} (${percent} %)`);
  } else {
    parts.push(formatBytes(p.bytesDone));
  }
  // No rate yet (the phase's first event): say nothing rather than `0 B/s`.
  if (p.bytesPerSecond > 0) parts.push(`${formatBytes(p.bytesPerSecond)}/s`);
  if (p.etaSeconds !== null) parts.push(`ETA ${formatDuration(p.etaSeconds)}`);
  return parts.join("  ");
}

/** A terminal progress line; `listener` is null when the output is not a terminal. */
export interface TerminalProgress {
  /** Pass to the operation (null: no terminal, stay quiet). */
  listener: ProgressListener | null;
  /** Clears the line (call before printing the result). */
  done(): void;
}

/**
 * Draws progress on one line of `out` (default stdout) at most `everyMs` apart, only when
 * `out` is a terminal; otherwise does nothing at all.
 */
export function terminalProgress(
  options: {
    out?: { isTerminal(): boolean; writeSync(bytes: Uint8Array): number };
    everyMs?: number;
    now?: () => number;
  } = {},
): TerminalProgress {
  const out = options.out ?? Deno.stdout;
  if (!out.isTerminal()) return { listener: null, done() {} };
  const now = options.now ?? Date.now;
  const every = options.everyMs ?? 250;
  const meter = new ProgressMeter(now);
  const encoder = new TextEncoder();
  let drawn = 0;
  let shown = false;
  let phase: string | null = null;
  const draw = () => {
    const snap = meter.snapshot();
    if (!snap) return;
    out.writeSync(encoder.encode(`\r\x1b[2K${formatProgress(snap)}`));
    shown = true;
  };
  return {
    listener(event) {
      meter.update(event);
      const t = now();
      if (event.phase !== phase || t - drawn >= every) {
        phase = event.phase;
        drawn = t;
        draw();
      }
    },
    done() {
      if (shown) out.writeSync(encoder.encode("\r\x1b[2K"));
      shown = false;
    },
  };
}
