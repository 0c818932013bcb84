/**
 * Every route the runtime serves, as declared by the api module that serves it (method,
 * path, caller, schemas: api/authz/declare.ts). The app refuses to start with a route
 * that is not declared; the tests check that the app serves exactly these; the route
 * table of docs/security.md and the authorisation matrix test are generated from them.
 *
 * A concern that adds a route declares it in its api module and lists the declarations
 * here.
 * @module
 */
import { ADMIN_ROUTES } from "../api/admin.ts";
import type { DeclaredRoute } from "../api/authz/mod.ts";
import { BACKUP_ROUTES } from "../api/backup.ts";
import { CHART_ROUTES } from "../api/core/charts.ts";
import { CLUSTER_ROUTES } from "../api/core/cluster.ts";
import { HISTORY_ROUTES } from "../api/core/history.ts";
import { ASSET_ROUTES, CONSOLE_ROUTES } from "../api/core/console.ts";
import { HEALTH_ROUTES } from "../api/core/health.ts";
import { STREAM_ROUTES } from "../api/core/streams.ts";
import { FAILOVER_ROUTES } from "../api/failover.ts";
import { LOGIN_ROUTES } from "../api/login.ts";
import { METRICS_ROUTES } from "../api/metrics.ts";
import { documentOf, OPENAPI_ROUTES, routeTable } from "../api/openapi.ts";
import { SESSION_ROUTES } from "../api/sessions.ts";
import { SYNC_ROUTES } from "../api/sync.ts";

/** Each concern's route declarations (`core` is the runtime's own). */
export const ROUTES_BY_CONCERN: Readonly<Record<string, readonly DeclaredRoute[]>> = {
  core: [
    ...Object.values(HEALTH_ROUTES),
    ...Object.values(STREAM_ROUTES),
    ...Object.values(CLUSTER_ROUTES),
    ...Object.values(HISTORY_ROUTES),
    ...Object.values(CHART_ROUTES),
    ...Object.values(CONSOLE_ROUTES),
    ...Object.values(ASSET_ROUTES),
    ...Object.values(OPENAPI_ROUTES),
  ],
  sessions: [
    ...Object.values(SESSION_ROUTES),
    ...Object.values(LOGIN_ROUTES),
    ...Object.values(ADMIN_ROUTES),
  ],
  sync: Object.values(SYNC_ROUTES),
  failover: Object.values(FAILOVER_ROUTES),
  metrics: Object.values(METRICS_ROUTES),
  backup: Object.values(BACKUP_ROUTES),
} as Record<string, readonly DeclaredRoute[]>;

/** Every declared route of the default concerns. */
export const ROUTE_DECLARATIONS: readonly DeclaredRoute[] = Object.values(ROUTES_BY_CONCERN)
  .flat();

/** The route table of docs/security.md (Markdown), from the declarations. */
export function routeTableMarkdown(): string {
  return routeTable(documentOf(ROUTE_DECLARATIONS, "docs"));
}
