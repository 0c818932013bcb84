/**
 * The backup concern's settings, read from environment variables and validated with zod as
 * part of the one configuration (concerns/config.ts). A wrong value stops start-up (exit 2,
 * before anything is opened) and the CLI with CONFIG_INVALID naming the variable and what
 * it expects.
 * @module
 */
import { Cron } from "croner";
import { z } from "zod";
import type { ConcernConfig } from "../../lib/config.ts";
import { RuntimeError } from "../../lib/errors.ts";
import { parseSettings, pickSettings } from "../../lib/settings.ts";

/** The kinds of backup (docs/backup.md defines them). */
export const BACKUP_TYPES = ["full", "base", "incremental", "differential"] as const;

/** One kind of backup. */
export type BackupType = typeof BACKUP_TYPES[number];

/** How long and how many backups of one type are kept. */
export interface RetentionRule {
  /** Backups older than this many days may be deleted (0: no age limit). */
  days: number;
  /** Only the newest `count` are kept (0: no count limit). */
  count: number;
}

/** Where backups are stored. */
export type StorageSettings =
  | { kind: "local"; dir: string }
  | {
    kind: "s3";
    bucket: string;
    prefix: string;
    endpoint?: string;
    region: string;
    accessKeyId?: string;
    secretAccessKey?: string;
    forcePathStyle: boolean;
  };

/** Every backup setting. */
export interface BackupSettings {
  /** Backup storage. */
  storage: StorageSettings;
  /** BACKUP_ENCRYPTION_KEY, or null to derive the passphrase from RS_SECRET_KEY. */
  passphrase: string | null;
  /** Compression of every stored file. */
  compression: { tool: "zstd" | "gzip"; level: number; threads: number };
  /** Cron expression per type, or null when that type is not scheduled. */
  schedules: Record<BackupType, string | null>;
  /** Scheduled base backups are file-level incremental (BACKUP_SCHEDULE_BASE_INCREMENTAL). */
  baseIncremental: boolean;
  /** Time zone the cron expressions are read in (IANA name). */
  timezone: string;
  /** Retention per type. */
  retention: Record<BackupType, RetentionRule>;
  /** Directory archive_command (archive_wal.ts) writes WAL to (incremental, differential, PITR). */
  walArchiveDir: string | null;
  /** How long a backup waits for its last WAL segment to be archived. */
  walTimeoutMs: number;
  /** What verification does after each backup. */
  verify: "restore" | "checksums" | "off";
  /** Where throw-away clusters and staging files go (default: the system temp dir). */
  scratchDir: string | null;
  /** Count the rows of every table at dump time, for the test-restore to compare. */
  rowCounts: boolean;
  /** Retries of a failed scheduled backup, and the first pause (doubling up to 1 h). */
  retry: { max: number; delayMs: number };
  /** PostgreSQL binaries. */
  pgBinDir: string;
  /** OS user server programs run as when the runtime is root. */
  pgServerUser: string;
}

/** The backup settings, documented (docs/configuration.md can list them). */
export const BACKUP_SETTINGS: readonly { env: string; default: string; description: string }[] = [
  { env: "BACKUP_DIR", default: "$RS_DATA_DIR/backups", description: "local backup storage" },
  {
    env: "BACKUP_STORAGE",
    default: "s3 when BACKUP_S3_BUCKET is set, else local",
    description: "local or s3",
  },
  { env: "BACKUP_S3_BUCKET", default: "(none)", description: "S3 bucket of the backups" },
  { env: "BACKUP_S3_PREFIX", default: "rootstream/", description: "key prefix in the bucket" },
  {
    env: "BACKUP_S3_ENDPOINT",
    default: "(AWS)",
    description: "URL of an S3-compatible server",
  },
  { env: "BACKUP_S3_REGION", default: "us-east-1", description: "S3 region" },
  {
    env: "BACKUP_S3_ACCESS_KEY_ID",
    default: "(AWS default credential chain)",
    description: "S3 access key (with BACKUP_S3_SECRET_ACCESS_KEY)",
  },
  {
    env: "BACKUP_S3_SECRET_ACCESS_KEY",
    default: "(AWS default credential chain)",
    description: "S3 secret key",
  },
  {
    env: "BACKUP_S3_FORCE_PATH_STYLE",
    default: "true with BACKUP_S3_ENDPOINT",
    description: "path-style S3 addressing",
  },
  {
    env: "BACKUP_ENCRYPTION_KEY",
    default: "(derived from RS_SECRET_KEY)",
    description: "passphrase (16+ characters) of the AES-256 backup encryption",
  },
  { env: "BACKUP_COMPRESSION", default: "zstd", description: "zstd or gzip" },
  {
    env: "BACKUP_COMPRESSION_LEVEL",
    default: "3 (gzip: 1)",
    description: "compression level",
  },
  {
    env: "BACKUP_COMPRESSION_THREADS",
    default: "0",
    description: "zstd threads (0: one per core)",
  },
  {
    env: "BACKUP_SCHEDULE_FULL",
    default: "0 2 * * *",
    description: "cron of full (logical) backups, or off",
  },
  { env: "BACKUP_SCHEDULE_BASE", default: "off", description: "cron of base backups" },
  {
    env: "BACKUP_SCHEDULE_BASE_INCREMENTAL",
    default: "false",
    description: "scheduled base backups store only the files changed since the newest base",
  },
  {
    env: "BACKUP_SCHEDULE_INCREMENTAL",
    default: "off",
    description: "cron of incremental (WAL) backups",
  },
  {
    env: "BACKUP_SCHEDULE_DIFFERENTIAL",
    default: "off",
    description: "cron of differential (WAL) backups",
  },
  { env: "BACKUP_SCHEDULE_TZ", default: "UTC", description: "time zone of the schedules" },
  { env: "BACKUP_RETENTION_FULL_DAYS", default: "30", description: "keep full backups (days)" },
  { env: "BACKUP_RETENTION_FULL_COUNT", default: "30", description: "keep full backups (count)" },
  { env: "BACKUP_RETENTION_BASE_DAYS", default: "14", description: "keep base backups (days)" },
  { env: "BACKUP_RETENTION_BASE_COUNT", default: "4", description: "keep base backups (count)" },
  {
    env: "BACKUP_RETENTION_INCREMENTAL_DAYS",
    default: "7",
    description: "keep incremental backups (days)",
  },
  {
    env: "BACKUP_RETENTION_INCREMENTAL_COUNT",
    default: "0 (no limit)",
    description: "keep incremental backups (count)",
  },
  {
    env: "BACKUP_RETENTION_DIFFERENTIAL_DAYS",
    default: "3",
    description: "keep differential backups (days)",
  },
  {
    env: "BACKUP_RETENTION_DIFFERENTIAL_COUNT",
    default: "10",
    description: "keep differential backups (count)",
  },
  {
    env: "BACKUP_WAL_ARCHIVE_DIR",
    default: "(none)",
    description: "WAL archive that archive_command fills (cli backup install-archiver)",
  },
  {
    env: "BACKUP_WAL_TIMEOUT_S",
    default: "120",
    description: "wait for the last WAL segment to be archived",
  },
  {
    env: "BACKUP_VERIFY",
    default: "restore",
    description: "after each backup: restore (checksums + test-restore), checksums or off",
  },
  {
    env: "BACKUP_SCRATCH_DIR",
    default: "$TMPDIR or /tmp",
    description: "throw-away clusters and restore staging",
  },
  {
    env: "BACKUP_ROW_COUNTS",
    default: "false",
    description:
      "count every table's rows in the dump's snapshot (exact, but a second full read of the data) for the test-restore to compare",
  },
  { env: "BACKUP_RETRY_MAX", default: "3", description: "retries of a failed scheduled backup" },
  {
    env: "BACKUP_RETRY_DELAY_S",
    default: "60",
    description: "first pause before a retry (doubling, at most 1 h)",
  },
  {
    env: "PG_BIN_DIR",
    default: "/usr/lib/postgresql/15/bin",
    description: "PostgreSQL 15 binaries",
  },
  {
    env: "PG_OS_USER",
    default: "postgres",
    description: "OS user PostgreSQL runs as (and archive_command is installed for)",
  },
];

/** Every variable this module reads. */
const BACKUP_ENV_VARS = BACKUP_SETTINGS.map((s) => s.env);

function int(min: number, max: number, what: string) {
  return z.string().trim().regex(/^\d+$/, { message: `an integer (${what})` }).transform(Number)
    .refine((n) => n >= min && n <= max, {
      message: `an integer between ${min} and ${max} (${what})`,
    });
}

const bool = z.enum(["true", "false", "1", "0", "yes", "no", "on", "off"], {
  message: "true or false",
}).transform((v) => ["true", "1", "yes", "on"].includes(v));

/** A cron expression croner accepts, or `off` / empty to disable. */
const cron = z.string().trim().refine((v) => {
  if (v === "off") return true;
  try {
    new Cron(v, { paused: true });
    return true;
  } catch {
    return false;
  }
}, {
  message: 'a cron expression such as "0 2 * * *" (minute hour day month weekday), or off',
}).transform((v) => v === "off" ? null : v);

const timezone = z.string().trim().refine((tz) => {
  try {
    new Intl.DateTimeFormat("en", { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}, { message: "an IANA time zone such as UTC or Europe/Berlin" });

const path = z.string().trim().min(1, { message: "a directory path" });

const schema = z.object({
  BACKUP_DIR: path.optional(),
  BACKUP_STORAGE: z.enum(["local", "s3"], { message: "local or s3" }).optional(),
  BACKUP_S3_BUCKET: z.string().trim().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, {
    message: "an S3 bucket name (3-63 lowercase letters, digits, '.' or '-')",
  }).optional(),
  BACKUP_S3_PREFIX: z.string().trim().regex(/^([A-Za-z0-9._-]+\/?)*$/, {
    message: "a key prefix of letters, digits, '.', '_', '-' and '/'",
  }).default("rootstream/"),
  BACKUP_S3_ENDPOINT: z.string().trim().refine((s) => {
    try {
      return ["http:", "https:"].includes(new URL(s).protocol);
    } catch {
      return false;
    }
  }, { message: "a URL like http://127.0.0.1:9000" }).optional(),
  BACKUP_S3_REGION: z.string().trim().regex(/^[a-z0-9-]{2,32}$/, {
    message: "a region such as us-east-1",
  }).default("us-east-1"),
  BACKUP_S3_ACCESS_KEY_ID: z.string().trim().min(1).optional(),
  BACKUP_S3_SECRET_ACCESS_KEY: z.string().trim().min(1).optional(),
  BACKUP_S3_FORCE_PATH_STYLE: bool.optional(),
  BACKUP_ENCRYPTION_KEY: z.string().min(16, {
    message: "a passphrase of at least 16 characters (e.g. `openssl rand -base64 32`)",
  }).optional(),
  BACKUP_COMPRESSION: z.enum(["zstd", "gzip"], { message: "zstd or gzip" }).default("zstd"),
  BACKUP_COMPRESSION_LEVEL: int(1, 19, "compression level").optional(),
  BACKUP_COMPRESSION_THREADS: int(0, 256, "zstd threads, 0 = one per core").default(0),
  BACKUP_SCHEDULE_FULL: cron.default("0 2 * * *"),
  BACKUP_SCHEDULE_BASE: cron.default(null),
  BACKUP_SCHEDULE_BASE_INCREMENTAL: bool.default(false),
  BACKUP_SCHEDULE_INCREMENTAL: cron.default(null),
  BACKUP_SCHEDULE_DIFFERENTIAL: cron.default(null),
  BACKUP_SCHEDULE_TZ: timezone.default("UTC"),
  BACKUP_RETENTION_FULL_DAYS: int(0, 36500, "days, 0 = no age limit").default(30),
  BACKUP_RETENTION_FULL_COUNT: int(0, 100000, "backups, 0 = no count limit").default(30),
  BACKUP_RETENTION_BASE_DAYS: int(0, 36500, "days, 0 = no age limit").default(14),
  BACKUP_RETENTION_BASE_COUNT: int(0, 100000, "backups, 0 = no count limit").default(4),
  BACKUP_RETENTION_INCREMENTAL_DAYS: int(0, 36500, "days, 0 = no age limit").default(7),
  BACKUP_RETENTION_INCREMENTAL_COUNT: int(0, 100000, "backups, 0 = no count limit").default(0),
  BACKUP_RETENTION_DIFFERENTIAL_DAYS: int(0, 36500, "days, 0 = no age limit").default(3),
  BACKUP_RETENTION_DIFFERENTIAL_COUNT: int(0, 100000, "backups, 0 = no count limit").default(
    10,
  ),
  BACKUP_WAL_ARCHIVE_DIR: path.optional(),
  BACKUP_WAL_TIMEOUT_S: int(1, 86400, "seconds").default(120),
  BACKUP_VERIFY: z.enum(["restore", "checksums", "off"], {
    message: "restore, checksums or off",
  }).default("restore"),
  BACKUP_SCRATCH_DIR: path.optional(),
  BACKUP_ROW_COUNTS: bool.default(false),
  BACKUP_RETRY_MAX: int(0, 100, "retries").default(3),
  BACKUP_RETRY_DELAY_S: int(1, 86400, "seconds").default(60),
  PG_BIN_DIR: path.default("/usr/lib/postgresql/15/bin"),
  PG_OS_USER: z.string().trim().regex(/^[a-z_][a-z0-9_-]{0,31}$/, {
    message: "an OS user name",
  }).default("postgres"),
});

/** A backup setting that is wrong in combination with another: one problem sentence. */
function invalid(problem: string): RuntimeError {
  return new RuntimeError("CONFIG_INVALID", `Invalid backup configuration: ${problem}`, {
    details: { problems: [problem] },
  });
}

/**
 * Parses the backup settings from `env` (empty values count as unset); throws
 * CONFIG_INVALID naming every bad variable.
 */
export function loadBackupSettings(
  env: Record<string, string | undefined>,
  options: { dataDir: string },
): BackupSettings {
  const c = parseSettings(schema, pickSettings(env, BACKUP_ENV_VARS));
  const kind = c.BACKUP_STORAGE ?? (c.BACKUP_S3_BUCKET ? "s3" : "local");
  let storage: StorageSettings;
  if (kind === "s3") {
    if (!c.BACKUP_S3_BUCKET) {
      throw invalid("BACKUP_S3_BUCKET: expected a bucket name when BACKUP_STORAGE=s3");
    }
    if (Boolean(c.BACKUP_S3_ACCESS_KEY_ID) !== Boolean(c.BACKUP_S3_SECRET_ACCESS_KEY)) {
      throw invalid(
        "BACKUP_S3_ACCESS_KEY_ID and BACKUP_S3_SECRET_ACCESS_KEY: expected both or neither " +
          "(neither uses the AWS default credential chain)",
      );
    }
    storage = {
      kind: "s3",
      bucket: c.BACKUP_S3_BUCKET,
      prefix: c.BACKUP_S3_PREFIX,
      endpoint: c.BACKUP_S3_ENDPOINT,
      region: c.BACKUP_S3_REGION,
      accessKeyId: c.BACKUP_S3_ACCESS_KEY_ID,
      secretAccessKey: c.BACKUP_S3_SECRET_ACCESS_KEY,
      forcePathStyle: c.BACKUP_S3_FORCE_PATH_STYLE ?? Boolean(c.BACKUP_S3_ENDPOINT),
    };
  } else {
    storage = {
      kind: "local",
      dir: c.BACKUP_DIR ?? `${options.dataDir.replace(/\/+$/, "")}/backups`,
    };
  }
  return {
    storage,
    passphrase: c.BACKUP_ENCRYPTION_KEY ?? null,
    compression: {
      tool: c.BACKUP_COMPRESSION,
      level: c.BACKUP_COMPRESSION_LEVEL ?? (c.BACKUP_COMPRESSION === "zstd" ? 3 : 1),
      threads: c.BACKUP_COMPRESSION_THREADS,
    },
    schedules: {
      full: c.BACKUP_SCHEDULE_FULL,
      base: c.BACKUP_SCHEDULE_BASE,
      incremental: c.BACKUP_SCHEDULE_INCREMENTAL,
      differential: c.BACKUP_SCHEDULE_DIFFERENTIAL,
    },
    baseIncremental: c.BACKUP_SCHEDULE_BASE_INCREMENTAL,
    timezone: c.BACKUP_SCHEDULE_TZ,
    retention: {
      full: { days: c.BACKUP_RETENTION_FULL_DAYS, count: c.BACKUP_RETENTION_FULL_COUNT },
      base: { days: c.BACKUP_RETENTION_BASE_DAYS, count: c.BACKUP_RETENTION_BASE_COUNT },
      incremental: {
        days: c.BACKUP_RETENTION_INCREMENTAL_DAYS,
        count: c.BACKUP_RETENTION_INCREMENTAL_COUNT,
      },
      differential: {
        days: c.BACKUP_RETENTION_DIFFERENTIAL_DAYS,
        count: c.BACKUP_RETENTION_DIFFERENTIAL_COUNT,
      },
    },
    walArchiveDir: c.BACKUP_WAL_ARCHIVE_DIR ?? null,
    walTimeoutMs: c.BACKUP_WAL_TIMEOUT_S * 1000,
    verify: c.BACKUP_VERIFY,
    scratchDir: c.BACKUP_SCRATCH_DIR ?? null,
    rowCounts: c.BACKUP_ROW_COUNTS,
    retry: { max: c.BACKUP_RETRY_MAX, delayMs: c.BACKUP_RETRY_DELAY_S * 1000 },
    pgBinDir: c.PG_BIN_DIR,
    pgServerUser: c.PG_OS_USER,
  };
}

/** The backup concern's part of the one configuration (BACKUP_DIR defaults under RS_DATA_DIR). */
export const BACKUP_CONFIG: ConcernConfig<BackupSettings> = {
  title: "Backup and recovery",
  intro: "Read by the backup concern (actors/backup) and `deno task cli backup`.",
  variables: BACKUP_SETTINGS,
  parse: (env, core) => loadBackupSettings(env, { dataDir: core.dataDir }),
};

/** The next time `expression` fires strictly after `afterMs`, or null when it never does. */
export function nextCronRun(
  expression: string,
  afterMs: number,
  options: { timezone?: string } = {},
): number | null {
  const next = new Cron(expression, { paused: true, timezone: options.timezone ?? "UTC" })
    .nextRun(new Date(afterMs));
  return next ? next.getTime() : null;
}
