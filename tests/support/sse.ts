/**
 * Reads server-sent events from a response in tests; every read gives up after a while
 * and says what it was waiting for.
 * @module
 */

/** One event as read. */
export interface ReadEvent {
  /** Event name (`message` when the block names none). */
  event: string;
  /** Its data, parsed as JSON. */
  data: Record<string, unknown>;
}

/** A reader of one event stream. */
export interface SseReader {
  /** The next event; rejects after `ms` (default 10 s) naming `what`. */
  next(what?: string, ms?: number): Promise<ReadEvent>;
  /** Stops reading and releases the stream. */
  cancel(): Promise<void>;
}

/** Reads server-sent events from a response body. */
export function sseReader(res: Response): SseReader {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  return {
    async next(what = "the next event", ms = 10_000) {
      let timer: number | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)),
          ms,
        );
      });
      try {
        for (;;) {
          const end = buf.indexOf("\n\n");
          if (end >= 0) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            const event = /^event: (.*)$/m.exec(block)?.[1] ?? "message";
            const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? "{}");
            return { event, data };
          }
          const { value, done } = await Promise.race([reader.read(), late]);
          if (done) throw new Error(`the event stream ended while waiting for ${what}`);
          buf += value;
        }
      } finally {
        clearTimeout(timer);
      }
    },
    cancel: () => reader.cancel().catch(() => {}),
  };
}
