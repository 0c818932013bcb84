/**
 * Retention: which backups to delete, decided by a pure function over the storage catalog,
 * then applied (storage files, history rows, the local WAL archive).
 *
 * Rules, per type, from BACKUP_RETENTION_<TYPE>_DAYS / _COUNT: a backup is a candidate
 * when it is older than `days` or not among the newest `count` (0 disables either limit).
 * Protections win over rules:
 * - the newest verified full backup is never deleted (nor the newest full one while none
 *   is verified); the same holds for base backups;
 * - an incremental is kept while a later incremental of the same chain is kept (deleting
 *   a link would cut every later link off its base);
 * - incremental and differential backups of a deleted base are deleted with it (they cannot
 *   be restored without it);
 * - a kept file-level incremental base backup keeps the base backups it references (its
 *   chain up to the root), whatever their own rules say;
 * - the local WAL archive keeps every segment from the start of the oldest kept base
 *   backup on: the WAL a kept base needs to become consistent and to roll forward.
 * Folders without a manifest (unfinished runs) are deleted after a day; folders whose
 * manifest cannot be verified are never deleted automatically (a wrong key looks the same).
 * @module
 */
import { walSegmentNumber } from "../../store/pg_tools.ts";
import type { Catalog } from "./manifest.ts";
import type { BackupType, RetentionRule } from "./settings.ts";

/** One decision. */
export interface RetentionDecision {
  /** Backup name. */
  name: string;
  /** Its type (null for unfinished folders). */
  type: BackupType | null;
  /** Why it is kept or deleted. */
  reason: string;
}

/** What retention will do. */
export interface RetentionPlan {
  /** Backups to delete. */
  delete: RetentionDecision[];
  /** Backups kept, with the rule or protection that keeps them. */
  keep: RetentionDecision[];
  /** Delete archived WAL below this segment number; null keeps the whole archive. */
  walKeepFrom: bigint | null;
  /** Segment size the boundary is expressed in. */
  segmentBytes: number | null;
}

const DAY_MS = 86_400_000;
const UNFINISHED_GRACE_MS = DAY_MS;

/** Plans retention for `catalog` at time `now` (pure). */
export function planRetention(
  catalog: Catalog,
  options: { now: number; rules: Record<BackupType, RetentionRule> },
): RetentionPlan {
  const { now, rules } = options;
  const entries = catalog.entries;
  const verdict = new Map<string, { del: boolean; reason: string }>();
  const byType = (type: BackupType) =>
    entries.filter((e) => e.manifest.type === type)
      .sort((a, b) => a.manifest.startedAt < b.manifest.startedAt ? 1 : -1); // newest first

  for (const type of ["full", "base", "incremental", "differential"] as const) {
    const rule = rules[type];
    for (const [index, e] of byType(type).entries()) {
      const ageDays = (now - Date.parse(e.manifest.startedAt)) / DAY_MS;
      if (rule.count > 0 && index >= rule.count) {
        verdict.set(e.manifest.name, {
          del: true,
          reason: `beyond the newest ${rule.count} ${type} backups`,
        });
      } else if (rule.days > 0 && ageDays > rule.days) {
        verdict.set(e.manifest.name, {
          del: true,
          reason: `older than ${rule.days} days (${ageDays.toFixed(1)})`,
        });
      } else {
        verdict.set(e.manifest.name, { del: false, reason: "within the retention rules" });
      }
    }
  }

  // Protect the newest verified full and base backup (or the newest one if none verified).
  for (const type of ["full", "base"] as const) {
    const list = byType(type);
    const verified = list.find((e) => e.verification !== null);
    const keep = verified ?? list[0];
    if (keep) {
      verdict.set(keep.manifest.name, {
        del: false,
        reason: verified
          ? `the newest verified ${type} backup is always kept`
          : `the newest ${type} backup is kept while none is verified`,
      });
    }
  }

  // A kept file-level incremental base backup keeps every base backup it references (its
  // whole chain up to the root): restoring it assembles files from them.
  const byName = new Map(entries.map((e) => [e.manifest.name, e.manifest]));
  for (const e of entries) {
    if (verdict.get(e.manifest.name)?.del !== false) continue;
    for (let m = e.manifest, depth = 0; m.physical?.parent && depth < entries.length; depth++) {
      const parent = byName.get(m.physical.parent);
      if (!parent) break;
      if (verdict.get(parent.name)?.del) {
        verdict.set(parent.name, {
          del: false,
          reason: `the incremental base backup ${m.name} references files in it`,
        });
      }
      m = parent;
    }
  }

  // WAL backups follow their base.
  for (const e of entries) {
    const m = e.manifest;
    if ((m.type === "incremental" || m.type === "differential") && m.base) {
      const base = verdict.get(m.base);
      if (!base || base.del) {
        verdict.set(m.name, {
          del: true,
          reason: base
            ? `its base backup ${m.base} is deleted`
            : `its base backup ${m.base} is gone`,
        });
      }
    }
  }

  // An incremental chain is cut only from its end: a kept link keeps every earlier link.
  const chains = new Map<string, typeof entries>();
  for (const e of entries) {
    if (e.manifest.type === "incremental" && e.manifest.base) {
      chains.set(e.manifest.base, [...(chains.get(e.manifest.base) ?? []), e]);
    }
  }
  for (const chain of chains.values()) {
    chain.sort((a, b) => a.manifest.startedAt < b.manifest.startedAt ? -1 : 1);
    let laterKept = false;
    for (let i = chain.length - 1; i >= 0; i--) {
      const v = verdict.get(chain[i].manifest.name)!;
      if (v.del && laterKept && verdict.get(chain[i].manifest.base!)?.del === false) {
        verdict.set(chain[i].manifest.name, {
          del: false,
          reason: "a later incremental of the same chain is kept and needs this one",
        });
      } else if (!v.del) {
        laterKept = true;
      }
    }
  }

  const plan: RetentionPlan = { delete: [], keep: [], walKeepFrom: null, segmentBytes: null };
  for (const e of entries) {
    const v = verdict.get(e.manifest.name)!;
    (v.del ? plan.delete : plan.keep).push({
      name: e.manifest.name,
      type: e.manifest.type,
      reason: v.reason,
    });
  }
  for (const u of catalog.unfinished) {
    const started = parseNameTime(u.name);
    if (started !== null && now - started > UNFINISHED_GRACE_MS) {
      plan.delete.push({ name: u.name, type: null, reason: "unfinished backup (no manifest)" });
    }
  }
  const keptBases = entries.filter((e) =>
    e.manifest.type === "base" && e.manifest.wal && !verdict.get(e.manifest.name)!.del
  );
  if (keptBases.length) {
    const bytes = keptBases[0].manifest.wal!.segmentBytes;
    plan.segmentBytes = bytes;
    plan.walKeepFrom = keptBases
      .map((e) => walSegmentNumber(e.manifest.wal!.startSegment, bytes))
      .reduce((a, b) => (a < b ? a : b));
  }
  return plan;
}

/** The start time encoded in a backup name, or null. */
export function parseNameTime(name: string): number | null {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z-/.exec(name);
  if (!m) return null;
  return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]);
}
