/**
 * Sequence announcements (`sync.heads`): how far this node got per origin, published by
 * the chart's `heads` region (when this node's sequence moved, when asked, and as a slow
 * keep-alive), and peers' announcements received. A peer's announcement is data (who it
 * is, what it holds: repair.ts asks it) and, while the chart watches for gaps, evidence of
 * batches this node lacks. It is not a heartbeat: whether a peer is alive is cluster
 * membership's (repair.ts).
 * @module
 */
import type { SyncAnnounceInput, SyncAnnounceOutput } from "../../machines/sync_node.ts";
import { describeError } from "../../lib/errors.ts";
import { heardFrom, parseMessage } from "./hot_path.ts";
import type { SyncDeps } from "./state.ts";
import { type Heads, HEADS_CHANNEL, headsSchema } from "./wire.ts";

/** Origins silent for longer than this are left out of announcements (ms). */
const ANNOUNCE_RECENT_MS = 10 * 60_000;

/** Announces this node's sequences (`want`: asks every peer to announce at once). */
export async function announce(
  deps: SyncDeps,
  input: SyncAnnounceInput,
): Promise<SyncAnnounceOutput> {
  const d = deps.data;
  const at = deps.now();
  const contig: Record<string, number> = {};
  const vector = d.tracker.vector();
  const recent = at - ANNOUNCE_RECENT_MS;
  for (const o in vector) {
    // Origins heard from lately (and this one): a peer may need them for a repair. Long
    // gone ones are in PostgreSQL and need not ride along in every announcement.
    if (vector[o] > 0 && (o === deps.origin || (d.originHeard.get(o) ?? 0) > recent)) {
      contig[o] = vector[o];
    }
  }
  const heads: Heads = {
    v: 1,
    o: deps.origin,
    n: deps.instanceId,
    s: d.outbox.lastSeq,
    c: contig,
  };
  if (input.want) heads.w = true;
  try {
    await deps.bus.publish(HEADS_CHANNEL, JSON.stringify(heads));
    if (heads.s > d.announcedSeq) d.announcedSeq = heads.s;
    deps.watch.link?.published();
  } catch (err) {
    deps.watch.link?.failed(describeError(err));
    throw err;
  }
  return { at };
}

/** Handles a message on the heads channel. */
export function onHeadsMessage(deps: SyncDeps, raw: string): void {
  // Our own announcement coming back (on every instance): skipped unparsed, as
  // our own batches are (`announce` writes `v` then `o` first, which is `selfPrefix`).
  if (raw.startsWith(deps.selfPrefix)) return;
  const d = deps.data;
  // At idle a peer's keep-alive repeats its last announcement byte for byte (each with an
  // entry per live origin): a repeat is already validated, and only its facts (heard now,
  // its sequences) are applied again.
  let h = d.headsParsed.get(raw) ?? null;
  if (!h) {
    h = parseMessage(deps, { raw, schema: headsSchema, what: "announcement" });
    if (!h) return;
    if (h.o === deps.origin) return;
    const before = d.headsRaw.get(h.n);
    if (before !== undefined) d.headsParsed.delete(before);
    d.headsRaw.set(h.n, raw);
    d.headsParsed.set(raw, h);
  }
  const t = deps.now();
  d.peers.set(h.n, { origin: h.o, at: t, contig: h.c });
  d.originInstance.set(h.o, h.n);
  heardFrom(deps, h.o);
  if (h.w) deps.watch.requests?.(t);
  // Before the chart caught up, the catch-up decides what is missing.
  const gaps = deps.watch.gaps;
  if (!gaps) return;
  let revealed = d.tracker.announce(h.o, h.s, t);
  for (const o in h.c) {
    if (o !== deps.origin && d.tracker.announce(o, h.c[o], t)) revealed = true;
  }
  if (revealed) {
    d.counters.gaps++;
    gaps(d.tracker.totalMissing());
  }
}
