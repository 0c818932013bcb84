import assert from "node:assert/strict";
import {
  type Catalog,
  type CatalogEntry,
  type Manifest,
  MANIFEST_FORMAT,
  writeManifest,
  writeVerification,
} from "../../actors/backup/manifest.ts";
import { planRetention } from "../../actors/backup/retention.ts";
import type { BackupType, RetentionRule } from "../../actors/backup/settings.ts";
import { tempDir, TEST_KEY, testService } from "./_helpers.ts";

const DAY = 86_400_000;
const NOW = Date.parse("2025-03-01T12:00:00Z");
const HEX = "0".repeat(64);
const SEG = 16 * 1024 * 1024;

function segment(n: number): string {
  return `00000001${"0".repeat(8)}${n.toString(16).toUpperCase().padStart(8, "0")}`;
}

let counter = 0;

/** A well-formed manifest of `type` started `daysAgo` days before NOW. */
function manifest(
  type: BackupType,
  daysAgo: number,
  options: { base?: Manifest; previous?: Manifest; segments?: [number, number] } = {},
): Manifest {
  const started = NOW - daysAgo * DAY;
  const stamp = new Date(started).toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  const name = `${stamp}-${type}-${(++counter).toString(16).padStart(6, "0")}`;
  const [from, to] = options.segments ?? [1, 1];
  return {
    format: MANIFEST_FORMAT,
    name,
    type,
    startedAt: new Date(started).toISOString(),
    completedAt: new Date(started + 60_000).toISOString(),
    encryption: {
      method: "aes-256-cbc+hmac-sha256",
      kdf: "pbkdf2-hmac-sha256",
      iterations: 100000,
    },
    server: { version: "15", systemIdentifier: "1" },
    files: [{
      name: "data.zst.enc",
      content: type === "full"
        ? "pg_dump-custom"
        : type === "base"
        ? "pg_basebackup-tar"
        : "wal-tar",
      compression: "zstd",
      size: 1,
      sha256: HEX,
      hmac: HEX,
      plainSize: 1,
      plainSha256: HEX,
    }],
    base: options.base?.name ?? null,
    previous: options.previous?.name ?? options.base?.name ?? null,
    wal: type === "full" ? null : {
      timeline: 1,
      startLsn: "0/1000000",
      endLsn: "0/2000000",
      startSegment: segment(from),
      endSegment: segment(to),
      endTime: new Date(started + 60_000).toISOString(),
      segmentBytes: SEG,
    },
    logical: type === "full" ? { database: "app", tables: [] } : null,
    physical: type === "base" ? { databases: ["app"] } : null,
  };
}

function entry(m: Manifest, verified = false): CatalogEntry {
  return {
    manifest: m,
    verification: verified
      ? { name: m.name, verifiedAt: m.completedAt, mode: "restore", probes: {} }
      : null,
  };
}

function rules(overrides: Partial<Record<BackupType, RetentionRule>> = {}) {
  return {
    full: { days: 30, count: 3 },
    base: { days: 14, count: 2 },
    incremental: { days: 7, count: 0 },
    differential: { days: 3, count: 1 },
    ...overrides,
  };
}

function deleted(catalog: Catalog, r = rules()): string[] {
  return planRetention(catalog, { now: NOW, rules: r }).delete.map((d) => d.name).sort();
}

Deno.test("retention planning", async (t) => {
  await t.step("full backups: by count and by age, either limit", () => {
    const f = [40, 20, 10, 5, 1].map((d) => manifest("full", d));
    const catalog = { entries: f.map((m) => entry(m, true)), unfinished: [], unreadable: [] };
    // count 3 keeps the three newest; the 40-day one is also too old.
    assert.deepEqual(deleted(catalog), [f[0].name, f[1].name].sort());
    assert.deepEqual(
      deleted(catalog, rules({ full: { days: 7, count: 0 } })),
      [
        f[0].name,
        f[1].name,
        f[2].name,
      ].sort(),
    );
  });

  await t.step("the newest verified full backup is never deleted", () => {
    const old = manifest("full", 50);
    const newer = manifest("full", 40);
    const catalog = {
      entries: [entry(old, true), entry(newer, false)],
      unfinished: [],
      unreadable: [],
    };
    // Both are past 30 days; the unverified newer one goes, the verified older one stays.
    const plan = planRetention(catalog, { now: NOW, rules: rules() });
    assert.deepEqual(plan.delete.map((d) => d.name), [newer.name]);
    assert.match(plan.keep[0].reason, /newest verified full/);
  });

  await t.step("WAL backups go with their base; a chain is cut only from its end", () => {
    const oldBase = manifest("base", 20, { segments: [2, 3] });
    const oldInc = manifest("incremental", 19, { base: oldBase, segments: [4, 5] });
    const base = manifest("base", 10, { segments: [10, 11] });
    const i1 = manifest("incremental", 9, { base, segments: [12, 13] });
    const i2 = manifest("incremental", 8, { base, previous: i1, segments: [14, 15] });
    const i3 = manifest("incremental", 1, { base, previous: i2, segments: [16, 17] });
    const catalog = {
      entries: [oldBase, oldInc, base, i1, i2, i3].map((m) => entry(m, m.type === "base")),
      unfinished: [],
      unreadable: [],
    };
    const plan = planRetention(catalog, { now: NOW, rules: rules() });
    // oldBase is past 14 days and takes its incremental along; i1 and i2 are past 7 days but
    // i3 (kept) needs them to replay from the base.
    assert.deepEqual(plan.delete.map((d) => d.name).sort(), [oldBase.name, oldInc.name].sort());
    assert.match(plan.delete.find((d) => d.name === oldInc.name)!.reason, /base backup .* deleted/);
    assert.match(plan.keep.find((k) => k.name === i1.name)!.reason, /later incremental/);
    // WAL from the start of the oldest kept base on stays in the archive.
    assert.equal(plan.walKeepFrom, 10n);
  });

  await t.step("an expired chain end lets the whole chain go", () => {
    const base = manifest("base", 3, { segments: [10, 10] });
    const i1 = manifest("incremental", 2.5, { base, segments: [11, 11] });
    const i2 = manifest("incremental", 2, { base, previous: i1, segments: [12, 12] });
    const catalog = {
      entries: [base, i1, i2].map((m) => entry(m, m.type === "base")),
      unfinished: [],
      unreadable: [],
    };
    assert.deepEqual(
      deleted(catalog, rules({ incremental: { days: 1, count: 0 } })),
      [
        i1.name,
        i2.name,
      ].sort(),
    );
  });

  await t.step("differentials: newest per count, unfinished folders after a day", () => {
    const base = manifest("base", 5, { segments: [1, 1] });
    const d1 = manifest("differential", 2, { base, segments: [1, 5] });
    const d2 = manifest("differential", 1, { base, segments: [1, 8] });
    const catalog = {
      entries: [entry(base, true), entry(d1), entry(d2)],
      unfinished: [
        { name: "20250228T000000Z-full-00aaaa", keys: [] },
        { name: "20250301T110000Z-full-00bbbb", keys: [] },
      ],
      unreadable: [{ name: "20250101T000000Z-full-00cccc", error: "other key" }],
    };
    // The unreadable one is never touched; the unfinished one from an hour ago may be running.
    assert.deepEqual(deleted(catalog), [d1.name, "20250228T000000Z-full-00aaaa"].sort());
  });

  await t.step("without a kept base backup the WAL archive is left alone", () => {
    const catalog = { entries: [entry(manifest("full", 1))], unfinished: [], unreadable: [] };
    assert.equal(planRetention(catalog, { now: NOW, rules: rules() }).walKeepFrom, null);
  });
});

Deno.test("retention applied: storage, WAL archive", async () => {
  const dir = await tempDir("rs-bk-retention-");
  const archive = `${dir}/wal`;
  await Deno.mkdir(archive);
  for (let n = 1; n <= 12; n++) await Deno.writeTextFile(`${archive}/${segment(n)}`, "wal");
  await Deno.writeTextFile(`${archive}/00000002.history`, "1\t0/5000000\tno recovery target\n");
  const service = testService({
    url: null,
    sql: null,
    dir,
    env: {
      BACKUP_WAL_ARCHIVE_DIR: archive,
      BACKUP_RETENTION_BASE_COUNT: "1",
      BACKUP_RETENTION_FULL_COUNT: "1",
    },
    now: () => NOW,
  });
  const storage = service.context.storage;
  try {
    const oldBase = manifest("base", 3, { segments: [3, 4] });
    const base = manifest("base", 1, { segments: [8, 9] });
    const full0 = manifest("full", 4);
    const full1 = manifest("full", 3);
    const full2 = manifest("full", 2);
    for (const m of [oldBase, base, full0, full1, full2]) {
      await storage.putText(`${m.name}/data.zst.enc`, "x");
      await writeManifest(storage, m, { passphrase: TEST_KEY });
    }
    // Count 1 keeps full2 (newest); full1 is past the count but is the newest verified one.
    await writeVerification(storage, {
      name: full1.name,
      verifiedAt: new Date(NOW).toISOString(),
      mode: "restore",
      probes: {},
    }, { passphrase: TEST_KEY });

    const dry = await service.prune({ dryRun: true });
    assert.deepEqual(dry.deleted, []);
    assert.equal((await storage.list(`${oldBase.name}/`)).length, 2);

    const report = await service.prune();
    assert.deepEqual(report.deleted.sort(), [oldBase.name, full0.name].sort());
    assert.equal((await storage.list(`${full2.name}/`)).length, 2);
    assert.deepEqual(await storage.list(`${oldBase.name}/`), []);
    assert.equal((await storage.list(`${full1.name}/`)).length, 3);
    // Segments before the kept base's start (8) are gone; history files stay.
    const left = [...Deno.readDirSync(archive)].map((e) => e.name).sort();
    assert.deepEqual(left, [...[8, 9, 10, 11, 12].map(segment), "00000002.history"]);
    assert.equal(report.walDeleted, 7);
  } finally {
    service.close();
    await Deno.remove(dir, { recursive: true });
  }
});
