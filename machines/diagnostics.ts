/**
 * The diagnostics actor every instance runs: it records notes other instances send it and
 * answers pings, so operators (and the cluster tests) can check delivery end to end.
 * @module
 */
import { assign, setup } from "xstate";

/** A note as recorded. */
export interface DiagnosticNote {
  /** Message id (repeated if the message was redelivered). */
  id: string;
  /** Sender instance. */
  from: string;
  /** Text of the note. */
  text: string;
}

/** Context of the diagnostics actor. */
export interface DiagnosticsContext {
  /** Notes received (including redeliveries). */
  received: number;
  /** The most recent notes, oldest first. */
  notes: DiagnosticNote[];
  /** How many notes are kept. */
  keep: number;
}

/** Events of the diagnostics actor. */
export type DiagnosticsEvent = {
  type: "diag.note";
  text: string;
  origin?: { id: string; from: { instance: string } };
};

/** The diagnostics statechart: one `ready` state that records notes. */
export const diagnosticsMachine = setup({
  types: {
    context: {} as DiagnosticsContext,
    events: {} as DiagnosticsEvent,
    input: {} as { keep?: number } | undefined,
  },
}).createMachine({
  id: "diagnostics",
  context: ({ input }) => ({ received: 0, notes: [], keep: input?.keep ?? 1000 }),
  initial: "ready",
  states: {
    ready: {
      on: {
        "diag.note": {
          actions: assign(({ context, event }) => ({
            received: context.received + 1,
            notes: [...context.notes, {
              id: event.origin?.id ?? "local",
              from: event.origin?.from.instance ?? "local",
              text: event.text,
            }].slice(-context.keep),
          })),
        },
      },
    },
  },
});
