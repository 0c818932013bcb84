/**
 * The default alert rules, each against a real InfluxDB (InfluxQL reader) and a real
 * VictoriaMetrics (PromQL reader) on a SimulatedClock: points in the shape the sources write are stored, the rule's actor
 * evaluates on the simulated schedule, fires while the points breach and resolves once its
 * window holds only healthy points. No real waits: each step moves the clock by the rule's
 * evaluation period and waits (until) for that evaluation's answer.
 */
import assert from "node:assert/strict";
import { type AnyActorLogic, createActor, SimulatedClock } from "xstate";
import type { RuntimeServices } from "../../actors/runtime/types.ts";
import { createAlerts } from "../../actors/metrics/alerts.ts";
import { DEFAULT_ALERT_RULE_NAMES } from "../../actors/metrics/default_rules.ts";
import { createInfluxQlReader } from "../../actors/metrics/influxql_reader.ts";
import { createPromQlReader } from "../../actors/metrics/promql_reader.ts";
import type { MetricsReader } from "../../actors/metrics/reader.ts";
import { type AlertRuleConfig, loadMetricsSettings } from "../../actors/metrics/settings.ts";
import { formatPoint, type MetricPoint } from "../../lib/line_protocol.ts";
import { createLogger } from "../../lib/log.ts";
import type { AlertContext } from "../../machines/alert.ts";
import { startInfluxDb, startVictoriaMetrics } from "../support/metrics_servers.ts";
import { until } from "../support/instance.ts";

/** How each default rule's measurement looks when it breaches and when it is healthy. */
const SCENARIOS: Record<
  string,
  { tags?: Record<string, string>; bad: Record<string, number>; good: Record<string, number> }
> = {
  // 3 failed logins every 10 s: 18 a minute (> 10).
  failed_logins: {
    bad: { failed: 3, succeeded: 1, mfa_required: 0, mfa_locked: 0 },
    good: { failed: 1, succeeded: 5, mfa_required: 0, mfa_locked: 0 },
  },
  database_down: { tags: { host: "db:5432" }, bad: { up: 0 }, good: { up: 1 } },
  memory_high: { tags: { host: "stream-01" }, bad: { percent: 95 }, good: { percent: 60 } },
  replication_lag: { tags: { replica: "replica1" }, bad: { seconds: 8 }, good: { seconds: 0.2 } },
  disk_space_low: {
    tags: { host: "stream-01", mount: "/var" },
    bad: { percent: 96, bytes: 9.6e11 },
    good: { percent: 40, bytes: 4e11 },
  },
  connection_pool_exhausted: {
    tags: { host: "db:5432" },
    bad: { percent: 95, count: 95, max: 100 },
    good: { percent: 30, count: 30, max: 100 },
  },
  backup_failed: {
    tags: { type: "full" },
    bad: { last_failed: 1, overdue: 0 },
    good: { last_failed: 0, overdue: 0 },
  },
  backup_stale: {
    tags: { type: "full" },
    bad: { last_failed: 0, overdue: 1, verified_age_seconds: 200_000 },
    good: { last_failed: 0, overdue: 0, verified_age_seconds: 60 },
  },
  // 1 lockout every 10 s: 30 in 5 minutes (> 5).
  mfa_lockouts_spike: {
    bad: { failed: 0, succeeded: 0, mfa_required: 1, mfa_locked: 1 },
    good: { failed: 0, succeeded: 2, mfa_required: 1, mfa_locked: 0 },
  },
  actor_given_up: {
    tags: { host: "rs-1" },
    bad: { running: 7, restarting: 0, given_up: 1 },
    good: { running: 8, restarting: 0, given_up: 0 },
  },
};

const POINT_EVERY = 10_000;

/** Where a rule's points go and are read from. */
interface Store {
  /** The reader the rule evaluates through. */
  reader: MetricsReader;
  /** Stores points (line protocol). */
  write(lines: string): Promise<void>;
}

const DEFAULTS = loadMetricsSettings({ INFLUX_URL: "http://127.0.0.1:1" }).alertRules
  .filter((r) => r.origin === "default");

/** Drives one rule through a breach and back on a SimulatedClock; `slot` keeps rules apart. */
async function exercise(rule: AlertRuleConfig, slot: number, store: Store) {
  const { reader } = store;
  const scenario = SCENARIOS[rule.name];
  // Each rule its own hour, hours back: no two rules' points meet in one store.
  const base = Math.floor((Date.now() - (24 - slot) * 3_600_000) / 60_000) * 60_000;
  const clock = new SimulatedClock();
  clock.set(base);
  const alerts = createAlerts({
    rules: [rule],
    reader,
    now: () => clock.now(),
    instanceId: "test",
    log: createLogger("alerts", { sink: () => {} }),
    webhook: null,
    broadcast: () => Promise.resolve(),
  });
  const spec = alerts.specs[0];
  const write = async (from: number, to: number, fields: Record<string, number>) => {
    const points: MetricPoint[] = [];
    for (let at = from; at < to; at += POINT_EVERY) {
      points.push({ measurement: rule.measurement, tags: scenario.tags, fields, time: at });
    }
    await store.write(points.map((p) => formatPoint(p)).join("\n"));
  };
  // Healthy history, then a breach lasting the rule's `for` plus three minutes, then
  // healthy again for twice the window.
  const breachAt = base + 2 * 60_000;
  const breachEnd = breachAt + rule.forMs + 3 * 60_000;
  const end = breachEnd + 2 * rule.windowMs + 60_000;
  await write(base - rule.windowMs, breachAt, scenario.good);
  await write(breachAt, breachEnd, scenario.bad);
  await write(breachEnd, end, scenario.good);

  // The logic and input ignore the runtime's services (alerts.ts closes over its options).
  const services = {} as RuntimeServices;
  const logic = spec.create(services) as AnyActorLogic;
  const actor = createActor(logic, { clock, input: spec.input!(services) as never });
  actor.start();
  try {
    const context = () => (actor.getSnapshot() as unknown as { context: AlertContext }).context;
    /** One evaluation period on the simulated clock, and that evaluation's answer. */
    const tick = async () => {
      const before = context().evaluations;
      clock.increment(rule.everyMs);
      await until(() => context().evaluations > before, {
        what: `evaluation ${before + 1} of ${rule.name}`,
        state: () => context(),
      });
      assert.equal(context().lastError, null, context().lastError ?? "");
    };
    const statuses: string[] = [];
    while (clock.now() < end) {
      await tick();
      if (statuses.at(-1) !== context().status) statuses.push(context().status);
      if (context().status === "resolved") break;
    }
    assert.ok(statuses.includes("firing"), `${rule.name} never fired: ${statuses}`);
    assert.equal(context().status, "resolved", `${rule.name}: ${statuses}`);
    const firedAt = context().firedAt!;
    // It fired no earlier than the breach began plus `for`, and no later than the window
    // needs to see the breach, plus one period and the `for` delay.
    assert.ok(firedAt >= breachAt + rule.forMs, `${rule.name} fired at ${firedAt - base}`);
    assert.ok(
      firedAt <= breachAt + rule.windowMs + rule.forMs + rule.everyMs,
      `${rule.name} fired late: ${firedAt - breachAt} ms after the breach`,
    );
    // It resolved only once the breach was over, within a window (+ one period) after it.
    const resolvedAt = context().resolvedAt!;
    assert.ok(resolvedAt >= breachEnd, `${rule.name} resolved during the breach`);
    assert.ok(resolvedAt <= breachEnd + rule.windowMs + 2 * rule.everyMs);
    const sent = alerts.notifications();
    assert.deepEqual([sent.log_firing, sent.log_resolved], [1, 1]);
    const view = alerts.views()[0];
    assert.equal(view.status, "resolved");
    if (scenario.tags && rule.groupBy.length) {
      assert.deepEqual(
        Object.fromEntries(rule.groupBy.map((k) => [k, view.tags[k]])),
        Object.fromEntries(rule.groupBy.map((k) => [k, scenario.tags![k]])),
      );
    }
  } finally {
    actor.stop();
  }
}

Deno.test("default alert rules fire and resolve (simulated clock)", async (t) => {
  assert.deepEqual(DEFAULTS.map((r) => r.name), DEFAULT_ALERT_RULE_NAMES);
  assert.deepEqual(Object.keys(SCENARIOS).sort(), [...DEFAULT_ALERT_RULE_NAMES].sort());

  await t.step("InfluxDB (InfluxQL reader)", async (t) => {
    await using influx = await startInfluxDb();
    const db = await influx.createDatabase();
    const store: Store = {
      reader: createInfluxQlReader({ url: influx.url, token: null, database: db }),
      write: (lines) => influx.write(db, lines),
    };
    for (const [slot, rule] of DEFAULTS.entries()) {
      await t.step(`${rule.name}: fires, then resolves`, () => exercise(rule, slot, store));
    }
  });

  await t.step("VictoriaMetrics (PromQL reader)", async (t) => {
    await using vm = await startVictoriaMetrics();
    const store: Store = {
      reader: createPromQlReader({ url: vm.url }),
      async write(lines) {
        const res = await fetch(`${vm.url}/write?precision=ms`, { method: "POST", body: lines });
        await res.body?.cancel();
        assert.equal(res.status, 204);
        await vm.flush();
      },
    };
    for (const [slot, rule] of DEFAULTS.entries()) {
      await t.step(`${rule.name}: fires, then resolves`, () => exercise(rule, slot, store));
    }
  });
});

Deno.test("default alert rules: on by default, overridable, disable-able by name", async (t) => {
  await t.step("every default rule is on without configuration", () => {
    const s = loadMetricsSettings({});
    assert.deepEqual(s.alertRules.map((r) => r.name), DEFAULT_ALERT_RULE_NAMES);
    const failed = s.alertRules.find((r) => r.name === "failed_logins")!;
    assert.equal(failed.op, ">");
    assert.equal(failed.threshold, 10);
    assert.equal(failed.windowMs, 60_000);
    assert.equal(failed.aggregate, "sum");
    const memory = s.alertRules.find((r) => r.name === "memory_high")!;
    assert.equal(memory.threshold, 90);
  });

  await t.step("a configured rule with a default's name replaces it", () => {
    const s = loadMetricsSettings({
      ALERT_RULES: JSON.stringify([{
        name: "memory_high",
        measurement: "system_memory_usage",
        field: "percent",
        op: ">",
        threshold: 80,
      }]),
    });
    const memory = s.alertRules.filter((r) => r.name === "memory_high");
    assert.equal(memory.length, 1);
    assert.equal(memory[0].threshold, 80);
    assert.equal(memory[0].origin, "configured");
    assert.equal(s.alertRules.length, DEFAULT_ALERT_RULE_NAMES.length);
  });

  await t.step("ALERT_DEFAULTS_DISABLED turns rules off by name, or all of them", () => {
    const s = loadMetricsSettings({ ALERT_DEFAULTS_DISABLED: "memory_high, backup_stale" });
    const names = s.alertRules.map((r: AlertRuleConfig) => r.name);
    assert.ok(!names.includes("memory_high") && !names.includes("backup_stale"));
    assert.equal(names.length, DEFAULT_ALERT_RULE_NAMES.length - 2);
    assert.deepEqual(loadMetricsSettings({ ALERT_DEFAULTS_DISABLED: "all" }).alertRules, []);
  });

  await t.step("an unknown name is a configuration error naming the variable", () => {
    assert.throws(
      () => loadMetricsSettings({ ALERT_DEFAULTS_DISABLED: "memory_hgih" }),
      (err: Error) => {
        assert.match(err.message, /ALERT_DEFAULTS_DISABLED names no default rule: "memory_hgih"/);
        return true;
      },
    );
  });
});
