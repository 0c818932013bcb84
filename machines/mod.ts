/**
 * Every statechart of the runtime, by chart name. `deno task charts` renders each one to
 * docs/charts/<name>.svg and .mmd; the review console draws them live.
 * @module
 */
import type { AnyStateMachine } from "xstate";

/** All machines, keyed by chart name. */
export const MACHINES: Record<string, AnyStateMachine> = {};
