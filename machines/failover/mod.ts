/**
 * Failover of the PostgreSQL primary, as one statechart per runtime instance:
 *
 * - `types.ts`: the data the chart holds and exchanges with its effects (plain data only).
 * - `decisions.ts`: the pure decisions, each returning what to do and one sentence why.
 * - `machine.ts`: the chart, one named state config per region, every action and guard
 *   named in `setup()`.
 *
 * The real effects live in actors/failover/.
 * @module
 */
export * from "./types.ts";
export * from "./decisions.ts";
export { failoverMachine } from "./machine.ts";
