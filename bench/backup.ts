/**
 * Backup suite: backup and restore throughput on a generated database of about 1 GB
 * (BENCH_BACKUP_MB) whose rows compress about 2:1 like real data (random hex, numbers,
 * timestamps), each next to the raw shell pipeline of the same tools measured in the same
 * run, on a server with fsync on (as production runs):
 *
 * - backup_mb_per_s: our full backup (pg_dump -Fc -Z0 → zstd → AES-256-CBC + HMAC → local
 *   storage, fsynced); baseline raw_pipeline_mb_per_s: `pg_dump -Fc -Z0 --no-sync | zstd -3
 *   -T0 | openssl enc -aes-256-cbc -pbkdf2 > file` in bash (what someone would choose).
 * - restore_mb_per_s: our restore (decrypt + HMAC, zstd -d, pg_restore in one transaction
 *   into a staging database, rename); baseline raw_restore_mb_per_s: `openssl enc -d | zstd
 *   -d | pg_restore -d new` of the raw pipeline's file.
 * - base_backup_mb_per_s: our physical base backup (pg_basebackup -Ft -X fetch → zstd →
 *   AES + HMAC → storage); baseline raw_base_backup_mb_per_s: `pg_basebackup -Ft -X none -D -
 *   | zstd -3 -T0 | openssl enc > file`.
 * - base_restore_mb_per_s: our restore of that base backup into a new data directory
 *   (check every file, decrypt + HMAC, zstd -d, tar -x, recovery in a throw-away server,
 *   probe, clean stop, rename); baseline raw_base_restore_mb_per_s: `openssl enc -d -in
 *   base.tar.zst.enc | zstd -d | tar -x` of the same stored file, then start the server on
 *   it until it accepts connections (recovery) and stop it.
 * - incremental_base_mb_per_s: a file-level incremental base backup (pg_basebackup's tar
 *   filtered against the previous one's file list, only changed files stored) after the
 *   newest 1 % of the rows were updated (a hot tail, as in most applications), over the
 *   cluster size; baseline: the raw base backup pipeline of the same run.
 *   incremental_base_stored_mb: what it stored; baseline: the full base backup's stored size.
 * - backup_rss_mb: peak RSS of this process while backing up (constant-memory check).
 *
 * Every figure prints `ratio` = figure / baseline. MB/s = database size (pg_database_size
 * of the bench database; the whole cluster for base backups) / seconds, medians of
 * BENCH_REPS (default 3) with ours and the baseline interleaved in each repetition.
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
const ENC = "openssl enc -aes-256-cbc -pbkdf2 -iter 100000 -md sha256 -pass env:BENCH_KEY";

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
  await sql`CHECKPOINT`;
  const [{ bytes }] = await sql<{ bytes: string }[]>`
    SELECT pg_database_size(current_database())::text AS bytes`;
  return Number(bytes);
}

function figure(
  name: string,
  unit: string,
  values: number[],
  baseline: { name: string; values: number[] } | null,
  better: "higher" | "lower" = "higher",
): Figure & { ratio?: number } {
  const value = median(values);
  const base = baseline ? median(baseline.values) : null;
  return {
    suite: "backup",
    name,
    unit,
    value: round(value, 1),
    better,
    baseline: baseline ? { name: baseline.name, value: round(base!, 1) } : null,
    ...(base ? { ratio: round(value / base, 2) } : {}),
  };
}

/** Runs the suite. */
export async function run(): Promise<Figure[]> {
  progress(`backup: starting PostgreSQL (fsync on); generating ~${TARGET_MB} MB`);
  await using pg = await startPostgres({
    name: "bench-backup",
    settings: {
      fsync: "on",
      shared_buffers: "256MB",
      max_wal_size: "4GB",
      checkpoint_timeout: "30min",
    },
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
  const bash = (script: string, database?: string) =>
    tools.runTool("bash", ["-c", `set -euo pipefail; ${script}`], {
      connection: { url, ...(database ? { database } : {}) },
      env: { BENCH_KEY: KEY },
      cwd: dir,
    }).then((r) => {
      if (!r.success) throw new Error(`bash ${script} failed: ${r.stderr}`);
      return r;
    });
  try {
    await migrate(sql);
    const bytes = await generate(sql, TARGET_MB);
    const mb = bytes / 1e6;
    const [{ cluster }] = await sql<{ cluster: string }[]>`
      SELECT sum(pg_database_size(datname))::text AS cluster FROM pg_database`;
    const clusterMb = Number(cluster) / 1e6;
    progress(`backup: database is ${round(mb, 1)} MB, cluster ${round(clusterMb, 1)} MB`);

    const s = {
      backup: [] as number[],
      raw: [] as number[],
      restore: [] as number[],
      rawRestore: [] as number[],
      base: [] as number[],
      rawBase: [] as number[],
      rss: [] as number[],
      baseRestore: [] as number[],
      rawBaseRestore: [] as number[],
      baseStored: [] as number[],
    };
    for (let rep = 0; rep < REPS; rep++) {
      const raw = await timed(() =>
        bash(`pg_dump -Fc -Z0 --no-sync | zstd -q -3 -T0 | ${ENC} > raw.enc`)
      );
      s.raw.push(mb / raw.seconds);

      let peak = Deno.memoryUsage().rss;
      const sampler = setInterval(() => peak = Math.max(peak, Deno.memoryUsage().rss), 200);
      const ours = await timed(() => service.create("full"));
      clearInterval(sampler);
      s.backup.push(mb / ours.seconds);
      s.rss.push(peak / 1e6);

      const rawRestore = await timed(async () => {
        await pg.psql(`CREATE DATABASE bare_${rep}`);
        await bash(
          `${ENC} -d < raw.enc | zstd -q -d | pg_restore --exit-on-error --single-transaction ` +
            `-d bare_${rep}`,
          `bare_${rep}`,
        );
      });
      s.rawRestore.push(mb / rawRestore.seconds);
      await pg.psql(`DROP DATABASE bare_${rep}`);

      const ourRestore = await timed(() =>
        service.restoreLogical(ours.value.name!, { database: `restored_${rep}`, url })
      );
      s.restore.push(mb / ourRestore.seconds);
      await pg.psql(`DROP DATABASE restored_${rep}`);

      const rawBase = await timed(() =>
        bash(`pg_basebackup -Ft -X none -D - --no-password | zstd -q -3 -T0 | ${ENC} > base.enc`)
      );
      s.rawBase.push(clusterMb / rawBase.seconds);
      const base = await timed(() => service.create("base"));
      s.base.push(clusterMb / base.seconds);
      s.baseStored.push(base.value.storedBytes / 1e6);
      await Deno.remove(`${dir}/base.enc`);

      const rawDir = `${dir}/raw-restore-${rep}`;
      const sockets = `${dir}/raw-socket-${rep}`;
      await tools.prepareDir(sockets);
      const stored = `${dir}/store/${base.value.name}/base.tar.zst.enc`;
      const rawBaseRestore = await timed(async () => {
        await tools.prepareDir(rawDir);
        await bash(
          `${ENC} -d -in ${stored} | zstd -q -d | setpriv --reuid=${tools.serverUser} ` +
            `--regid=${tools.serverUser} --init-groups tar -x -C ${rawDir}`,
        );
        const server = await tools.startServer(rawDir, {
          tcp: false,
          trustLocalSocket: true,
          socketDir: sockets,
          logPath: `${sockets}/raw-restore.log`,
          settings: { archive_mode: "off" },
        });
        await server.stop();
      });
      s.rawBaseRestore.push(clusterMb / rawBaseRestore.seconds);
      await Deno.remove(rawDir, { recursive: true });
      const ourBaseRestore = await timed(() =>
        service.restorePointInTime({
          targetTime: null,
          targetDir: `${dir}/restore-${rep}`,
          base: base.value.name!,
        })
      );
      s.baseRestore.push(clusterMb / ourBaseRestore.seconds);
      await Deno.remove(`${dir}/restore-${rep}`, { recursive: true });
      progress(
        `backup rep ${rep + 1}/${REPS}: backup ${round(s.backup[rep], 1)} MB/s (raw pipeline ` +
          `${round(s.raw[rep], 1)}), stored ${round(ours.value.storedBytes / 1e6, 1)} MB, ` +
          `rss ${round(s.rss[rep], 0)} MB; restore ${round(s.restore[rep], 1)} MB/s (raw ` +
          `${round(s.rawRestore[rep], 1)}); base ${round(s.base[rep], 1)} MB/s (raw ` +
          `${round(s.rawBase[rep], 1)}); base restore ${round(s.baseRestore[rep], 1)} MB/s (raw ` +
          `${round(s.rawBaseRestore[rep], 1)})`,
      );
    }
    // File-level incremental base: the root of a chain (stores everything, with the file
    // list), then 1 % of the rows changed, then the incremental measured.
    const incremental = [] as number[];
    const incrementalStored = [] as number[];
    await service.create("base", { incremental: true });
    for (let rep = 0; rep < REPS; rep++) {
      const [{ max }] = await sql<{ max: string }[]>`SELECT max(id)::text AS max FROM bench_data`;
      const from = Math.floor(Number(max) * 0.99);
      await sql`UPDATE bench_data SET amount = amount + 1 WHERE id > ${from}`;
      await sql`CHECKPOINT`;
      const inc = await timed(() => service.create("base", { incremental: true }));
      incremental.push(clusterMb / inc.seconds);
      incrementalStored.push(inc.value.storedBytes / 1e6);
      progress(
        `backup incremental base ${rep + 1}/${REPS}: ${round(incremental[rep], 1)} MB/s, ` +
          `stored ${round(incrementalStored[rep], 1)} MB`,
      );
    }
    return [
      figure("incremental_base_mb_per_s", "MB/s", incremental, {
        name: "raw_base_backup_mb_per_s",
        values: s.rawBase,
      }),
      figure("incremental_base_stored_mb", "MB", incrementalStored, {
        name: "base_stored_mb",
        values: s.baseStored,
      }, "lower"),
      figure("backup_mb_per_s", "MB/s", s.backup, {
        name: "raw_pipeline_mb_per_s",
        values: s.raw,
      }),
      figure("restore_mb_per_s", "MB/s", s.restore, {
        name: "raw_restore_mb_per_s",
        values: s.rawRestore,
      }),
      figure("base_backup_mb_per_s", "MB/s", s.base, {
        name: "raw_base_backup_mb_per_s",
        values: s.rawBase,
      }),
      figure("base_restore_mb_per_s", "MB/s", s.baseRestore, {
        name: "raw_base_restore_mb_per_s",
        values: s.rawBaseRestore,
      }),
      figure("backup_rss_mb", "MB", s.rss, null, "lower"),
    ];
  } finally {
    service.close();
    await sql.end();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
