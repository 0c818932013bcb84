/**
 * Repairs: fetching exactly the batches this node is missing, and answering peers that
 * fetch from it. The chart's `repairing` state runs `repair`; whether to repair, and when
 * to try again, is the chart's.
 *
 * Missing batches come from PostgreSQL; else from their origin over request/reply
 * (`sync.fetch`, from its ring of recent batches); else from any peer whose announcement
 * shows it has them. An origin no longer holding a batch of its own answers with the
 * current state of the entities that batch touched. Batches of an origin that is gone and
 * that nobody can provide are given up (shelved) after `giveUpMs`.
 * @module
 */
import type { Batch } from "../../lib/crdt_batch.ts";
import { parseEntityKey } from "../../lib/crdt_batch.ts";
import { describeError } from "../../lib/errors.ts";
import type { SyncRepairOutput } from "../../machines/sync_node.ts";
import { readBatches } from "../../store/sync.ts";
import { mergeState } from "./entities.ts";
import { ingest, rejectMessage } from "./hot_path.ts";
import { jsonBytes, type SyncDeps } from "./state.ts";
import { type FetchReply, fetchReplySchema, type FetchRequest, SYNC_ACTOR } from "./wire.ts";

/** Bytes of batch and entity JSON one `sync.fetch` reply carries at most. */
const REPLY_BUDGET = 48_000;

/**
 * True while `instance` is a live member of the cluster (membership's view, which notices a
 * dead instance within its detection time); true when membership is not known.
 */
function instanceLive(deps: SyncDeps, instance: string): boolean {
  return deps.members?.live()?.has(instance) ?? true;
}

/**
 * True while `origin`'s instance is alive and runs this origin. Alive is what cluster
 * membership says (a dead instance is known within its detection time); besides, the origin
 * must have spoken (a batch or an announcement) within `originLiveMs` — several keep-alives —
 * which only catches a sync node stopped on an instance that still heartbeats. An origin's
 * sequence known from its last announcement stays valid until it announces another:
 * announcements are not heartbeats.
 */
function originLive(deps: SyncDeps, origin: string): boolean {
  const d = deps.data;
  const inst = d.originInstance.get(origin);
  const live = deps.members?.live() ?? null;
  if (live && (!inst || !live.has(inst))) return false;
  const heard = d.originHeard.get(origin);
  if (heard === undefined || deps.now() - heard > deps.originLiveMs) return false;
  // A newer incarnation on the same instance means this one is gone.
  const peer = inst ? d.peers.get(inst) : undefined;
  return !peer || peer.origin === origin;
}

async function fetchFromPeer(
  deps: SyncDeps,
  input: { instance: string; origin: string; seqs: number[] },
): Promise<void> {
  const d = deps.data;
  const o = input.origin;
  const reply = await deps.transport.request<unknown>(
    { instance: input.instance, actor: SYNC_ACTOR },
    { type: "sync.fetch", origin: o, seqs: input.seqs.slice(0, 500) },
    { timeoutMs: deps.peerTimeoutMs, from: SYNC_ACTOR },
  );
  const parsed = fetchReplySchema.safeParse(reply);
  if (!parsed.success) {
    rejectMessage(deps, {
      what: "fetch reply",
      detail: parsed.error.issues[0]?.message ?? "invalid",
    });
    return;
  }
  for (const b of parsed.data.batches) {
    if (b.o === o && ingest(deps, { batch: b, raw: null, source: "repair" })) {
      d.counters.repaired++;
    }
  }
  for (const { k, state } of parsed.data.entities) {
    const key = parseEntityKey(k);
    if (key) mergeState(deps, { type: key.type, id: key.id, state, notify: true });
  }
  if (parsed.data.resynced.length) {
    d.tracker.skip(o, parsed.data.resynced);
    d.counters.resynced += parsed.data.resynced.length;
  }
}

/** Fetches missing batches; stops early when `signal` aborts (the chart left `repairing`). */
export async function repair(
  deps: SyncDeps,
  input: { signal?: AbortSignal },
): Promise<SyncRepairOutput> {
  const d = deps.data;
  let lost = 0;
  const before = d.counters.repaired + d.counters.resynced;
  for (const [o, seqs] of d.tracker.missing(2000)) {
    if (input.signal?.aborted) break;
    try {
      for (const stored of await readBatches(deps.sql, o, seqs)) {
        if (ingest(deps, { batch: stored.batch, raw: null, source: "repair" })) {
          d.counters.repaired++;
        }
      }
    } catch (err) {
      deps.log.warn("cannot read missing batches from the database", {
        origin: o,
        error: describeError(err),
      });
    }
    let left = seqs.filter((s) => !d.tracker.seen(o, s));
    if (!left.length) continue;
    const candidates: string[] = [];
    const home = d.originInstance.get(o);
    if (home && home !== deps.instanceId && originLive(deps, o)) candidates.push(home);
    const need = left[left.length - 1];
    for (const [inst, p] of d.peers) {
      if (
        inst !== deps.instanceId && !candidates.includes(inst) && (p.contig[o] ?? 0) >= need &&
        instanceLive(deps, inst)
      ) {
        candidates.push(inst);
      }
    }
    for (const instance of candidates) {
      try {
        await fetchFromPeer(deps, { instance, origin: o, seqs: left });
      } catch (err) {
        deps.log.debug("peer could not provide missing batches", {
          peer: instance,
          error: describeError(err),
        });
      }
      left = left.filter((s) => !d.tracker.seen(o, s));
      if (!left.length) break;
    }
    if (!left.length) continue;
    const since = d.tracker.missingSince(o);
    if (!originLive(deps, o) && since !== null && deps.now() - since >= deps.giveUpMs) {
      // Nobody has them: the origin is gone, they were never stored, no peer holds them.
      // Shelved, not forgotten: if the origin was only frozen and speaks again, they are
      // fetched after all.
      d.tracker.shelve(o, left);
      lost += left.length;
      d.counters.lost += left.length;
      for (const c of d.caches.values()) c.clear();
      deps.log.warn("gave up missing sync batches: the origin is gone and nobody has them", {
        origin: o,
        batches: left.length,
      });
    }
  }
  const repaired = d.counters.repaired + d.counters.resynced - before;
  return { repaired, lost, remaining: d.tracker.totalMissing() };
}

/** Answers a peer's `sync.fetch` from the ring, or with entity states for own old batches. */
export function serveFetch(deps: SyncDeps, request: FetchRequest): FetchReply {
  const d = deps.data;
  const reply: FetchReply = { batches: [], entities: [], resynced: [], missing: [] };
  let budget = REPLY_BUDGET;
  const resyncKeys = new Map<number, string[]>();
  for (const s of request.seqs) {
    const json = d.ring.get(request.origin, s);
    if (json !== undefined) {
      if (json.length > budget && reply.batches.length) {
        reply.missing.push(s);
        continue;
      }
      budget -= json.length;
      reply.batches.push(JSON.parse(json) as Batch);
    } else if (request.origin === deps.origin && d.ownKeys.has(s)) {
      resyncKeys.set(s, d.ownKeys.get(s)!);
    } else {
      reply.missing.push(s);
    }
  }
  // The ring no longer holds these own batches: send the current state of the entities
  // they touched instead, which includes their effect.
  const sent = new Set<string>();
  for (const [s, keys] of resyncKeys) {
    let fits = true;
    for (const k of keys) {
      if (sent.has(k)) continue;
      const e = d.entities.get(k);
      if (!e) continue;
      const size = jsonBytes(e.state);
      if (size > budget) {
        fits = false;
        break;
      }
      budget -= size;
      sent.add(k);
      reply.entities.push({ k, state: e.state });
    }
    if (fits) reply.resynced.push(s);
    else reply.missing.push(s);
  }
  return reply;
}
