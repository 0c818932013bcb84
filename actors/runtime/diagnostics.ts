/**
 * Registry entry of the diagnostics actor: accepts `diag.note` (addressed or broadcast)
 * and answers `diag.ping` and `diag.notes` requests.
 * @module
 */
import { z } from "zod";
import { diagnosticsMachine } from "../../machines/diagnostics.ts";
import type { ActorSpec, RemoteEvent } from "./types.ts";
import type { DiagnosticsContext } from "../../machines/diagnostics.ts";

const note = z.object({ type: z.literal("diag.note"), text: z.string().max(4096) }) as z.ZodType<
  RemoteEvent
>;
const ping = z.object({
  type: z.literal("diag.ping"),
  delayMs: z.number().int().min(0).max(60_000).optional(),
}) as z.ZodType<
  RemoteEvent
>;
const notes = z.object({ type: z.literal("diag.notes") }) as z.ZodType<RemoteEvent>;

/** The diagnostics actor's registry entry. */
export function diagnosticsSpec(options: { instanceId: string; now: () => number }): ActorSpec {
  return {
    id: "diagnostics",
    create: () => diagnosticsMachine,
    summarize: (snapshot) => {
      const ctx = (snapshot as unknown as { context: DiagnosticsContext }).context;
      return { received: ctx.received };
    },
    accepts: { "diag.note": note },
    requests: {
      "diag.ping": {
        schema: ping,
        async handle(event) {
          // An optional delay lets tests (and operators) exercise request timeouts.
          const delayMs = (event as { delayMs?: number }).delayMs ?? 0;
          if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
          return { instance: options.instanceId, at: options.now() };
        },
      },
      "diag.notes": {
        schema: notes,
        handle(_event, { ref }) {
          const ctx = (ref?.getSnapshot() as { context?: DiagnosticsContext } | undefined)?.context;
          return Promise.resolve({
            received: ctx?.received ?? 0,
            notes: ctx?.notes ?? [],
          });
        },
      },
    },
  };
}
