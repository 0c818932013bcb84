/**
 * Routes of the backup concern: `GET /backups` (history), `GET /backups/:id` (one run with its manifest
 * summary and verification), `POST /backups` (queue a backup on the scheduler).
 *
 * The GET routes show paths and errors of the storage: operators only (or `backups:read`).
 * POST is an admin action: an admin session that re-authenticated recently, or the admin
 * token (RS_ADMIN_TOKEN).
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import { RuntimeError } from "../lib/errors.ts";
import type { BackupRecord } from "../store/backup_history.ts";
import { declareRoute, jsonBody, jsonResponse, serve } from "./authz/mod.ts";

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
  request(
    type: (typeof TYPES)[number],
    options?: { incremental?: boolean },
  ): Promise<{ instance: string }>;
}

const listQuery = z.object({
  type: z.enum(TYPES).optional(),
  limit: z.string().regex(/^\d{1,4}$/).transform(Number).refine((n) => n >= 1 && n <= 1000)
    .optional(),
  deleted: z.enum(["true", "false"]).transform((v) => v === "true").optional(),
});

// `incremental`: a file-level incremental base backup (only with type base).
const postBody = z.object({ type: z.enum(TYPES), incremental: z.boolean().optional() }).strict()
  .refine((b) => !b.incremental || b.type === "base");

const idParam = z.string().regex(/^[1-9]\d{0,17}$/);

const Backup = z.looseObject({
  id: z.string(),
  name: z.string(),
  type: z.string(),
  status: z.string(),
  startedAt: z.string(),
}).openapi("Backup");

/** The backup routes' declarations. */
export const BACKUP_ROUTES = {
  list: declareRoute({
    method: "get",
    path: "/backups",
    tags: ["backup"],
    summary: "Backup history, newest first",
    access: { caller: "operator", scope: "backups:read" },
    invalid: "Invalid query: type is full, base, incremental or differential; limit is 1-1000; " +
      "deleted is true or false",
    request: { query: listQuery },
    responses: {
      200: jsonResponse(
        z.object({
          available: z.boolean(),
          unavailableReason: z.string().optional(),
          backups: z.array(Backup),
        }),
        "The history",
      ),
    },
  }),
  get: declareRoute({
    method: "get",
    path: "/backups/{id}",
    tags: ["backup"],
    summary: "One backup with its manifest summary and verification",
    access: { caller: "operator", scope: "backups:read" },
    invalid: "Invalid backup id: expected a positive integer",
    request: { params: z.object({ id: idParam }) },
    responses: {
      200: jsonResponse(z.object({ backup: Backup }), "The backup"),
      404: jsonResponse(z.looseObject({}), "No such backup (BACKUP_NOT_FOUND)"),
    },
  }),
  create: declareRoute({
    method: "post",
    path: "/backups",
    tags: ["backup"],
    summary: "Queues a backup on the instance that holds the scheduler lease",
    access: { caller: "admin" },
    maxBody: 4 * 1024,
    invalid: 'Invalid body: expected {"type": "full" | "base" | "incremental" | "differential"} ' +
      '(and "incremental": true only with "type": "base")',
    request: { body: jsonBody(postBody) },
    responses: {
      202: jsonResponse(
        z.object({
          status: z.literal("queued"),
          type: z.string(),
          incremental: z.boolean(),
          scheduler: z.string(),
        }),
        "Queued",
      ),
      409: jsonResponse(
        z.looseObject({}),
        "Not queued: a backup of that type is still queued or running (CONFLICT)",
      ),
      503: jsonResponse(z.looseObject({}), "Backups cannot run here (BACKUP_UNAVAILABLE)"),
    },
  }),
};

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
    // While it runs: phase, bytes done / expected, rate, ETA (actors/backup/progress.ts).
    progress: r.status === "in_progress" ? r.metadata.progress ?? null : null,
    ...(detail ? { metadata: r.metadata, verification: r.verification } : {}),
  };
}

/** Adds the backup routes. */
export function addBackupRoutes(app: OpenAPIHono, deps: BackupRoutesDeps): void {
  serve(app, BACKUP_ROUTES.list, async (c) => {
    const q = c.req.valid("query");
    const rows = await deps.list({
      type: q.type,
      limit: q.limit ?? 50,
      includeDeleted: q.deleted ?? false,
    });
    return c.json({
      available: deps.availability.ok,
      ...(deps.availability.reason ? { unavailableReason: deps.availability.reason } : {}),
      backups: rows.map((r) => backupView(r)),
    });
  });

  serve(app, BACKUP_ROUTES.get, async (c) => {
    const { id } = c.req.valid("param");
    const record = await deps.get(id);
    if (!record) throw new RuntimeError("BACKUP_NOT_FOUND", `Backup ${id} does not exist`);
    return c.json({ backup: backupView(record, true) });
  });

  serve(app, BACKUP_ROUTES.create, async (c) => {
    if (!deps.availability.ok) {
      throw new RuntimeError(
        "BACKUP_UNAVAILABLE",
        `Cannot create a backup: ${deps.availability.reason}`,
      );
    }
    const { type, incremental = false } = c.req.valid("json");
    const { instance } = await deps.request(type, incremental ? { incremental } : {});
    return c.json({ status: "queued", type, incremental, scheduler: instance }, 202);
  });
}
