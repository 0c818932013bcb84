/**
 * Routes of the backup concern: `GET /backups` (history), `GET /backups/:id` (one run with its manifest
 * summary and verification), `POST /backups` (queue a backup on the scheduler).
 *
 * POST needs `Authorization: Bearer <RS_ADMIN_TOKEN>`, compared in constant time; with no
 * RS_ADMIN_TOKEN configured it is disabled (403), a missing or wrong token is 401. The GET
 * routes show no secrets (no keys, no credentials) and are open like /health.
 * @module
 */
import type { Hono } from "hono";
import { createHash, timingSafeEqual } from "node:crypto";
import { z } from "zod";
import { RuntimeError } from "../lib/errors.ts";
import type { BackupRecord } from "../store/backup_history.ts";

/** Backup types accepted by POST /backups. */
const TYPES = ["full", "base", "incremental", "differential"] as const;

/** What the routes need. */
export interface BackupRoutesDeps {
  /** History rows, newest first. */
  list(
    options: { type?: (typeof TYPES)[number]; limit?: number; includeDeleted?: boolean },
  ): Promise<
    BackupRecord[]
  >;
  /** One row by id, or null. */
  get(id: string): Promise<BackupRecord | null>;
  /** Whether backups can run here, and why not. */
  availability: { ok: boolean; reason: string | null };
  /** Queues a backup on whichever instance holds the scheduler lease. */
  request(type: (typeof TYPES)[number]): Promise<{ instance: string }>;
  /** RS_ADMIN_TOKEN, or null (POST disabled). */
  adminToken: string | null;
}

const listQuery = z.object({
  type: z.enum(TYPES).optional(),
  limit: z.string().regex(/^\d{1,4}$/).transform(Number).refine((n) => n >= 1 && n <= 1000)
    .optional(),
  deleted: z.enum(["true", "false"]).transform((v) => v === "true").optional(),
});

const postBody = z.object({ type: z.enum(TYPES) }).strict();

const idParam = z.string().regex(/^[1-9]\d{0,17}$/);

/** The public view of a history row. */
export function backupView(r: BackupRecord, detail = false): Record<string, unknown> {
  return {
    id: r.id,
    name: r.name,
    type: r.type,
    status: r.status,
    trigger: r.trigger,
    path: r.path,
    backupSize: r.backupSize,
    compressedSize: r.compressedSize,
    encryptionMethod: r.encryptionMethod,
    startedAt: r.startedAt.toISOString(),
    completedAt: r.completedAt?.toISOString() ?? null,
    error: r.errorMessage,
    verifiedAt: r.verifiedAt?.toISOString() ?? null,
    deletedAt: r.deletedAt?.toISOString() ?? null,
    parentId: r.parentId,
    instance: r.instanceId,
    ...(detail ? { metadata: r.metadata, verification: r.verification } : {}),
  };
}

function digest(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/** Throws unless `header` carries the admin token (constant-time comparison of digests). */
export function requireAdmin(header: string | undefined, token: string | null): void {
  if (!token) {
    throw new RuntimeError(
      "FORBIDDEN",
      "Creating backups over HTTP is disabled: set RS_ADMIN_TOKEN on the server to enable it",
    );
  }
  const presented = /^Bearer\s+(\S+)$/i.exec(header ?? "")?.[1];
  // Comparing fixed-length digests keeps the time independent of where (and whether)
  // the strings differ, including their lengths.
  const ok = presented !== undefined && timingSafeEqual(digest(presented), digest(token));
  if (!ok) {
    throw new RuntimeError(
      "UNAUTHORIZED",
      "Creating a backup needs `Authorization: Bearer <RS_ADMIN_TOKEN>`",
    );
  }
}

/** Adds the backup routes. */
export function addBackupRoutes(app: Hono, deps: BackupRoutesDeps): void {
  app.get("/backups", async (c) => {
    const q = listQuery.safeParse(c.req.query());
    if (!q.success) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        "Invalid query: type is full, base, incremental or differential; limit is 1-1000; " +
          "deleted is true or false",
      );
    }
    const rows = await deps.list({
      type: q.data.type,
      limit: q.data.limit ?? 50,
      includeDeleted: q.data.deleted ?? false,
    });
    return c.json({
      available: deps.availability.ok,
      ...(deps.availability.reason ? { unavailableReason: deps.availability.reason } : {}),
      backups: rows.map((r) => backupView(r)),
    });
  });

  app.get("/backups/:id", async (c) => {
    const id = idParam.safeParse(c.req.param("id"));
    if (!id.success) {
      throw new RuntimeError("VALIDATION_FAILED", "Invalid backup id: expected a positive integer");
    }
    const record = await deps.get(id.data);
    if (!record) throw new RuntimeError("BACKUP_NOT_FOUND", `Backup ${id.data} does not exist`);
    return c.json({ backup: backupView(record, true) });
  });

  app.post("/backups", async (c) => {
    requireAdmin(c.req.header("authorization"), deps.adminToken);
    if (!deps.availability.ok) {
      throw new RuntimeError(
        "BACKUP_UNAVAILABLE",
        `Cannot create a backup: ${deps.availability.reason}`,
      );
    }
    let body: unknown;
    try {
      body = await c.req.json();
    } catch {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        'Invalid body: expected JSON like {"type":"full"}',
      );
    }
    const parsed = postBody.safeParse(body);
    if (!parsed.success) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        'Invalid body: expected {"type": "full" | "base" | "incremental" | "differential"}',
      );
    }
    const { instance } = await deps.request(parsed.data.type);
    return c.json({ status: "queued", type: parsed.data.type, scheduler: instance }, 202);
  });
}
