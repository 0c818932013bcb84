/**
 * Backup suite: full (logical) backup and restore throughput on a generated database of
 * about 1 GB (BENCH_BACKUP_MB) whose rows compress about 2:1 like real data (random hex,
 * numbers, timestamps), next to the bare tools measured in the same run:
 *
 * - backup_mb_per_s: our full backup (pg_dump -Fc -Z0 | zstd -3 | AES-256-CBC + HMAC |
 *   SHA-256 | local storage, plus row counts in the dump's snapshot); baseline: bare
 *   `pg_dump -Fc -f /dev/null` (its default zlib compression, no encryption).
 * - restore_mb_per_s: our restore (check every file's SHA-256 + HMAC, decrypt, zstd -d,
 *   pg_restore in one transaction into a staging database, row-count probes, rename);
 *   baseline: bare `pg_restore -d` of a plain `pg_dump -Fc` file.
 * - backup_rss_mb: peak RSS of this process while backing up (constant-memory check).
 *
 * MB/s = database size (pg_database_size) / seconds, medians of BENCH_REPS (default 3).
 * @module
 */
import postgres from "postgres";
import { silentLogger } from "../lib/log.ts";
import { migrate } from "../store/migrations.ts";
import { createPgTools } from "../store/pg_tools.ts";
import type { Sql } from "../store/types.ts";
import { openBackupService } from "../actors/backup/service.ts";
import { loadBackupSettings } from "../actors/backup/settings.ts";
import { startPostgres } from "../tests/harness/mod.ts";
import { type Figure, median, progress, round } from "./_util.ts";

const TARGET_MB = Number(Deno.env.get("BENCH_BACKUP_MB") ?? 1024);
const REPS = Number(Deno.env.get("BENCH_REPS") ?? 3);
const KEY = "bench-passphrase-0123456789abcdef";

async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  const t0 = performance.now();
  const value = await fn();
  return { value, seconds: (performance.now() - t0) / 1000 };
}

/** Fills `bench_data` until the database is about `mb` MB. */
async function generate(sql: Sql, mb: number): Promise<number> {
  await sql`
    CREATE TABLE bench_data (
      id bigint PRIMARY KEY,
      hash text NOT NULL,
      payload text NOT NULL,
      amount bigint NOT NULL,
      ratio double precision NOT NULL,
      at timestamptz NOT NULL
    )`;
  const rowsPerMb = 6200;
  const total = Math.round(mb * rowsPerMb * 0.93);
  const batch = 500_000;
  for (let from = 1; from <= total; from += batch) {
    const to = Math.min(total, from + batch - 1);
    await sql`
      INSERT INTO bench_data
      SELECT g, md5(random()::text), md5(g::text) || md5(random()::text),
             (random() * 1e12)::bigint, random(),
             timestamptz '2024-01-01' + random() * interval '700 days'
      FROM generate_series(${from}::bigint, ${to}::bigint) g`;
    progress(`backup: generated ${to} / ${total} rows`);
  }
  await sql`VACUUM ANALYZE bench_data`;
  const [{ bytes }] = await sql<{ bytes: string }[]>`
    SELECT pg_database_size(current_database())::text AS bytes`;
  return Number(bytes);
}

/** Runs the suite. */
export async function run(): Promise<Figure[]> {
  progress(`backup: starting PostgreSQL; generating ~${TARGET_MB} MB`);
  await using pg = await startPostgres({
    name: "bench-backup",
    settings: { shared_buffers: "256MB", max_wal_size: "4GB", checkpoint_timeout: "30min" },
  });
  const url = await pg.createDatabase("benchdb");
  const dir = await Deno.makeTempDir({ prefix: "rs-bench-backup-" });
  await Deno.chmod(dir, 0o755);
  const sql = postgres(url, { max: 4, onnotice: () => {} }) as Sql;
  const tools = createPgTools();
  const service = openBackupService({
    settings: loadBackupSettings({
      BACKUP_DIR: `${dir}/store`,
      BACKUP_ENCRYPTION_KEY: KEY,
      BACKUP_SCRATCH_DIR: `${dir}/scratch`,
    }, { dataDir: dir }),
    databaseUrl: url,
    sql,
    secretKey: null,
    instanceId: "bench",
    log: silentLogger,
    now: Date.now,
  });
  try {
    await migrate(sql);
    const bytes = await generate(sql, TARGET_MB);
    const mb = bytes / 1e6;
    progress(`backup: database is ${round(mb, 1)} MB`);
    const plainDump = `${dir}/plain.dump`;
    await tools.runOk("pg_dump", ["-Fc", "-f", plainDump], { connection: { url } });

    const backup: number[] = [];
    const baseline: number[] = [];
    const restore: number[] = [];
    const baselineRestore: number[] = [];
    const rss: number[] = [];
    for (let rep = 0; rep < REPS; rep++) {
      const bare = await timed(() =>
        tools.runOk("pg_dump", ["-Fc", "--no-sync", "-f", "/dev/null"], { connection: { url } })
      );
      baseline.push(mb / bare.seconds);

      let peak = Deno.memoryUsage().rss;
      const sampler = setInterval(() => peak = Math.max(peak, Deno.memoryUsage().rss), 200);
      const ours = await timed(() => service.create("full"));
      clearInterval(sampler);
      backup.push(mb / ours.seconds);
      rss.push(peak / 1e6);

      const bareRestore = await timed(async () => {
        await pg.psql(`CREATE DATABASE bare_${rep}`);
        await tools.runOk("pg_restore", ["-d", `bare_${rep}`, plainDump], {
          connection: { url, database: `bare_${rep}` },
        });
      });
      baselineRestore.push(mb / bareRestore.seconds);
      await pg.psql(`DROP DATABASE bare_${rep}`);

      const ourRestore = await timed(() =>
        service.restoreLogical(ours.value.name!, { database: `restored_${rep}`, url })
      );
      restore.push(mb / ourRestore.seconds);
      await pg.psql(`DROP DATABASE restored_${rep}`);
      progress(
        `backup rep ${rep + 1}/${REPS}: backup ${round(backup[rep], 1)} MB/s (bare pg_dump ` +
          `${round(baseline[rep], 1)}), stored ${round(ours.value.storedBytes / 1e6, 1)} MB, ` +
          `rss ${round(rss[rep], 0)} MB; restore ${round(restore[rep], 1)} MB/s (bare ` +
          `pg_restore ${round(baselineRestore[rep], 1)})`,
      );
    }
    return [
      {
        suite: "backup",
        name: "backup_mb_per_s",
        unit: "MB/s",
        value: round(median(backup), 1),
        better: "higher",
        baseline: { name: "pg_dump_devnull_mb_per_s", value: round(median(baseline), 1) },
      },
      {
        suite: "backup",
        name: "restore_mb_per_s",
        unit: "MB/s",
        value: round(median(restore), 1),
        better: "higher",
        baseline: { name: "pg_restore_mb_per_s", value: round(median(baselineRestore), 1) },
      },
      {
        suite: "backup",
        name: "backup_rss_mb",
        unit: "MB",
        value: round(median(rss), 0),
        better: "lower",
        baseline: null,
      },
    ];
  } finally {
    service.close();
    await sql.end();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
