/**
 * A test actor that counts `ping`s and crashes on `crash`, for supervision tests.
 * @module
 */
import { z } from "zod";
import { assign, setup } from "xstate";
import type { ActorSpec, RemoteEvent } from "../../actors/runtime/types.ts";

/** The machine: `ping` counts, `crash` throws (the supervisor restarts or gives it up). */
const fragileMachine = setup({
  types: { context: {} as { pings: number }, events: {} as { type: "ping" } | { type: "crash" } },
}).createMachine({
  id: "fragile",
  context: { pings: 0 },
  initial: "up",
  states: {
    up: {
      on: {
        ping: { actions: assign({ pings: ({ context }) => context.pings + 1 }) },
        crash: {
          actions: () => {
            throw new Error("fragile crashed on purpose");
          },
        },
      },
    },
  },
});

/** Registry entry of the crashing test actor (`fragile`). */
export const fragileSpec: ActorSpec = {
  id: "fragile",
  create: () => fragileMachine,
  summarize: (s) => ({ pings: (s as unknown as { context: { pings: number } }).context.pings }),
  accepts: {
    ping: z.object({ type: z.literal("ping") }) as z.ZodType<RemoteEvent>,
    crash: z.object({ type: z.literal("crash") }) as z.ZodType<RemoteEvent>,
  },
};
