/**
 * The streaming plumbing of backups and restores, in constant memory. The bulk work runs in
 * native programs joined by FIFOs (the compressor, `openssl enc`); this process moves and
 * authenticates only what it must (see create.ts and restore.ts for the two directions).
 *
 * {@linkcode runPipeline} pipes the stages itself and watches every pipe and every process:
 * a stage that fails, or a program that exits non-zero, fails the whole run with the most
 * telling error, and the processes still running are killed.
 * @module
 */
import { RuntimeError } from "../../lib/errors.ts";
import {
  assertSuccess,
  type PgTools,
  type ToolProcess,
  type ToolResult,
} from "../../store/pg_tools.ts";

/** A readable / writable pair the data flows through. */
export type Stage = { writable: WritableStream<Uint8Array>; readable: ReadableStream<Uint8Array> };

/** Compression settings. */
export interface CompressionSettings {
  /** zstd or gzip (the binaries). */
  tool: "zstd" | "gzip";
  /** Level (zstd 1-19, gzip 1-9). */
  level: number;
  /** zstd worker threads, 0 = one per core. */
  threads: number;
}

/** Options of {@linkcode runPipeline}. */
export interface PipelineOptions<T> {
  /** Where the data comes from. */
  source: ReadableStream<Uint8Array>;
  /** Stages in order (transform streams or process stdin/stdout pairs). */
  stages: (Stage | TransformStream<Uint8Array, Uint8Array>)[];
  /** Consumes the output (a storage upload, a process's stdin, …). */
  sink: (stream: ReadableStream<Uint8Array>) => Promise<T>;
  /**
   * Other transfers of the same run (e.g. a tool's output pumped into a compressor whose
   * output reaches `source` through a FIFO); a failure of one fails the run.
   */
  pumps?: Promise<unknown>[];
  /** Every program involved; each must exit 0. */
  processes: ToolProcess[];
  /** Aborting fails the run and kills the programs. */
  signal?: AbortSignal;
  /** What the run does, for error sentences (e.g. `backup 2025…-full-3fa9c1`). */
  what: string;
}

/** Codes that describe the data itself; they win over the errors they cause downstream. */
const ROOT_CAUSES = new Set(["BACKUP_CORRUPT", "BACKUP_KEY_MISMATCH", "STORAGE_FAILED"]);

/**
 * Pipes `source` through `stages` into `sink` and waits for every program. Resolves with
 * the sink's result only when every pipe finished cleanly and every program exited 0.
 */
export async function runPipeline<T>(
  options: PipelineOptions<T>,
): Promise<{ value: T; results: ToolResult[] }> {
  const { processes } = options;
  const errors: unknown[] = [];
  let killed = false;
  function killAll(): void {
    if (killed) return;
    killed = true;
    for (const p of processes) p.kill("SIGTERM");
  }
  function failed(err: unknown): void {
    errors.push(err);
    killAll();
  }
  const onAbort = () => failed(options.signal?.reason ?? new Error("aborted"));
  if (options.signal?.aborted) onAbort();
  options.signal?.addEventListener("abort", onAbort, { once: true });

  const pipes: Promise<void>[] = (options.pumps ?? []).map((p) =>
    p.then(() => {}, (err) => failed(err))
  );
  let stream = options.source;
  for (const stage of options.stages) {
    pipes.push(stream.pipeTo(stage.writable).catch((err) => failed(err)));
    stream = stage.readable;
  }
  let value: T | undefined;
  const sinkDone = options.sink(stream).then((v) => {
    value = v;
  }, (err) => {
    failed(err);
    // Unblock the producers: nobody reads their output any more.
    stream.cancel(err).catch(() => {});
  });
  // A program that exits non-zero fails the run at once (its output may look complete).
  const watched = processes.map((p) =>
    p.finished.then((r) => {
      if (!r.success && !killed) failed(toolError(r, options.what));
      return r;
    })
  );
  await Promise.all([...pipes, sinkDone]);
  const results = await Promise.all(watched);
  options.signal?.removeEventListener("abort", onAbort);
  if (errors.length || results.some((r) => !r.success)) {
    throw chooseError(errors, results, options.what);
  }
  return { value: value as T, results };
}

function toolError(result: ToolResult, what: string): RuntimeError {
  try {
    assertSuccess(result, what);
  } catch (err) {
    return err as RuntimeError;
  }
  return new RuntimeError("INTERNAL", `${what}: ${result.program} reported failure`);
}

/** Picks the error that explains the failure best (see the module doc). */
function chooseError(errors: unknown[], results: ToolResult[], what: string): unknown {
  const rootCause = errors.find((e) => e instanceof RuntimeError && ROOT_CAUSES.has(e.code));
  if (rootCause) return rootCause;
  // A program that failed on its own (exit code, not our SIGTERM) says most.
  const own = results.find((r) => !r.success && r.signal === null);
  if (own) return toolError(own, what);
  const runtime = errors.find((e) => e instanceof RuntimeError);
  if (runtime) return runtime;
  if (errors.length) {
    const first = errors[0];
    return new RuntimeError(
      "BACKUP_FAILED",
      `${what} failed: ${first instanceof Error ? first.message : String(first)}`,
      { cause: first },
    );
  }
  return toolError(results.find((r) => !r.success)!, what);
}

/** A pass-through stage that only counts the bytes (no per-byte work beyond the copy). */
export function counter(): { stage: TransformStream<Uint8Array, Uint8Array>; bytes: () => number } {
  let bytes = 0;
  const stage = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, controller) {
      bytes += chunk.length;
      controller.enqueue(chunk);
    },
  });
  return { stage, bytes: () => bytes };
}

/** The shell command (exec'd, so the process is the tool) of a compressor or decompressor. */
export function codecCommand(
  settings: CompressionSettings | { tool: "zstd" | "gzip"; decompress: true },
  options: { count?: boolean } = {},
): string {
  if ("decompress" in settings) {
    return settings.tool === "zstd" ? "zstd -q -d -c" : "gzip -d -c";
  }
  // -vv: the exact bytes read, on stderr at the end (no progress: stderr is no terminal).
  return settings.tool === "zstd"
    ? `zstd ${options.count ? "-vv" : "-q"} -${settings.level} -T${settings.threads} -c`
    : `gzip -${Math.min(settings.level, 9)} -c`;
}

/** Creates a FIFO (mode 600) the server user owns, so its tools can open it too. */
export async function makeFifo(tools: PgTools, path: string): Promise<string> {
  assertSuccess(await tools.runTool("mkfifo", ["-m", "600", path]), "mkfifo");
  await tools.chownToServerUser(path);
  return path;
}

/**
 * Starts `command` (a codec command line) reading `input` (a FIFO path, or its stdin when
 * null) and writing `output` (a FIFO path, or its stdout when null). The shell only
 * redirects and then becomes the program (exec), so killing it kills the program.
 */
export function spawnCodec(
  tools: PgTools,
  command: string,
  io: { input: string | null; output: string | null; signal?: AbortSignal },
): ToolProcess {
  const redirect = [
    io.input === null ? "" : ' < "$1"',
    io.output === null ? "" : ' > "$2"',
  ].join("");
  return tools.spawnTool("sh", [
    "-c",
    `exec ${command}${redirect}`,
    "sh",
    io.input ?? "",
    io.output ?? "",
  ], {
    stdin: io.input === null ? "piped" : "null",
    stdout: io.output === null ? "piped" : "null",
    signal: io.signal,
  });
}
