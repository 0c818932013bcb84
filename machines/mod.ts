/**
 * Every statechart of the runtime, by chart name. `deno task charts` renders each one to
 * docs/charts/<name>.svg and .mmd; the review console draws them live.
 * @module
 */
import type { AnyStateMachine } from "xstate";
import { clusterNodeMachine } from "./cluster_node.ts";
import { diagnosticsMachine } from "./diagnostics.ts";
import { failoverMachine } from "./failover/mod.ts";
import { leaseMachine } from "./lease.ts";
import { loginMachine } from "./login.ts";
import { sessionSupervisorMachine } from "./session_supervisor.ts";
import { alertMachine } from "./alert.ts";
import { backupSchedulerMachine } from "./backup_scheduler.ts";
import { metricsCollectorMachine } from "./metrics_collector.ts";
import { supervisorMachine } from "./supervisor.ts";
import { syncNodeMachine } from "./sync_node.ts";

/** All machines, keyed by chart name (the machine's id). */
export const MACHINES: Record<string, AnyStateMachine> = {
  supervisor: supervisorMachine,
  cluster_node: clusterNodeMachine,
  lease: leaseMachine,
  diagnostics: diagnosticsMachine,
  failover: failoverMachine,
  session_supervisor: sessionSupervisorMachine,
  login: loginMachine,
  metrics_collector: metricsCollectorMachine,
  alert: alertMachine,
  sync_node: syncNodeMachine,
  backup_scheduler: backupSchedulerMachine,
};
