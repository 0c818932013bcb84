/**
 * Snapshots and catch-up. A new or restarted node loads the latest snapshot of every
 * entity and replays only the batches after the latest checkpoint (store/sync.ts); the
 * holder of the snapshot role writes compressed snapshot rounds, fenced by its token.
 * When each runs is the chart's (`catching_up`, `snapshots.active.writing`).
 * @module
 */
import { entityKey } from "../../lib/crdt_batch.ts";
import { newestStamp } from "../../lib/crdt.ts";
import type {
  SyncCatchUpOutput,
  SyncSnapshotInput,
  SyncSnapshotOutput,
} from "../../machines/sync_node.ts";
import {
  encodeEntityState,
  latestCheckpoint,
  listOrigins,
  loadEntitySnapshots,
  readBatchesAfter,
  rebuildEntity,
  type SnapshotInput,
  writeSnapshotRound,
} from "../../store/sync.ts";
import { checkEntityId, entityFor, mergeState, view } from "./entities.ts";
import { ingest } from "./hot_path.ts";
import type { SyncDeps } from "./state.ts";
import type { EntityView } from "./types.ts";

/** Loads the latest snapshots and replays the batches after the latest checkpoint. */
export async function catchUp(deps: SyncDeps): Promise<SyncCatchUpOutput> {
  const d = deps.data;
  const checkpoint = await latestCheckpoint(deps.sql);
  let loaded = 0;
  for await (const page of loadEntitySnapshots(deps.sql)) {
    for (const s of page) {
      if (d.entities.has(entityKey(s.type, s.id))) {
        mergeState(deps, { type: s.type, id: s.id, state: s.state, notify: true });
      } else {
        entityFor(deps, { type: s.type, id: s.id }).state = s.state;
        const stamp = newestStamp(s.state);
        if (stamp) deps.clock.receive(stamp);
      }
      loaded++;
    }
  }
  const origins = await listOrigins(deps.sql);
  for (const o of origins) d.originInstance.set(o.origin, o.instanceId);
  const vv = checkpoint?.vv ?? {};
  for (const o in vv) if (o !== deps.origin) d.tracker.cover(o, vv[o]);
  let batches = 0;
  for await (const page of readBatchesAfter(deps.sql, vv)) {
    for (const stored of page) {
      if (ingest(deps, { batch: stored.batch, raw: null, source: "catchup" })) batches++;
    }
  }
  const t = deps.now();
  for (const o of origins) {
    if (o.origin !== deps.origin) d.tracker.announce(o.origin, o.persistedSeq, t);
  }
  return {
    entities: loaded,
    batches,
    checkpoint: checkpoint?.round ?? null,
    missing: d.tracker.totalMissing(),
  };
}

/** Writes a snapshot round under the role's token: entities changed since the last round. */
export async function writeRound(
  deps: SyncDeps,
  input: SyncSnapshotInput,
): Promise<SyncSnapshotOutput> {
  const d = deps.data;
  const token = input.token;
  if (token === null) return { round: null, entities: 0, skipped: "not the snapshot holder" };
  // The first round under a token writes every entity: the previous holder's dirty set is
  // unknown here, and the checkpoint must hold for all of them.
  const full = d.dirtyToken !== token;
  const keys = full ? [...d.entities.keys()] : [...d.dirty];
  // The vector is captured before any state is serialised: states only grow, so each
  // snapshot covers at least the batches the checkpoint claims.
  const vv = d.tracker.vector();
  for (const o of Object.keys(vv)) if (!vv[o]) delete vv[o];
  for (const k of keys) d.dirty.delete(k);
  const rows: SnapshotInput[] = [];
  try {
    for (let i = 0; i < keys.length; i++) {
      const e = d.entities.get(keys[i]);
      if (!e) continue;
      const { compressed, rawBytes } = encodeEntityState(e.state);
      rows.push({ type: e.type, id: e.id, compressed, rawBytes });
      // Compressing is CPU work: let the hot path run between slices.
      if (i % 200 === 199) await new Promise((r) => setTimeout(r, 0));
    }
    const result = await writeSnapshotRound(deps.sql, {
      token,
      vv,
      by: deps.instanceId,
      entities: rows,
    });
    if ("refused" in result) {
      for (const k of keys) d.dirty.add(k);
      d.dirtyToken = null;
      deps.log.warn("snapshot round refused", { reason: result.refused });
      return { round: null, entities: 0, skipped: result.refused };
    }
    d.dirtyToken = token;
    return { round: result.round, entities: rows.length };
  } catch (err) {
    for (const k of keys) d.dirty.add(k);
    throw err;
  }
}

/** The entity rebuilt from PostgreSQL alone (latest snapshot + later deltas), or null. */
export async function rebuild(
  deps: SyncDeps,
  input: { type: string; id: string | number },
): Promise<EntityView | null> {
  const { type } = input;
  const sid = checkEntityId(type, input.id, { action: "rebuild entity" });
  const built = await rebuildEntity(deps.sql, type, sid, { strategy: deps.strategies[type] });
  return built ? view({ type, id: sid, key: entityKey(type, sid), state: built.state }) : null;
}
