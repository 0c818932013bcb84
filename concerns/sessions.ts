/**
 * The sessions concern: the session service and its supervisor actor (actors/sessions)
 * with the `/auth` and `/sessions` routes (api/sessions.ts), the console's sign-in pages
 * (api/login.ts) and the admin routes of roles and machine tokens (api/admin.ts).
 * @module
 */
import { createSessionsParts, type SessionService } from "../actors/sessions/mod.ts";
import type { SessionsSettings } from "../actors/sessions/settings.ts";
import type { LimitsSettings } from "../lib/limits.ts";
import type { RuntimeServices } from "../actors/runtime/types.ts";
import { addAdminRoutes } from "../api/admin.ts";
import { addLoginPages } from "../api/login.ts";
import { addSessionRoutes } from "../api/sessions.ts";
import type { Concern } from "./types.ts";

/** Builds the sessions concern from the runtime's services and its settings. */
export function createSessionsConcern(
  services: RuntimeServices,
  settings: SessionsSettings,
  limits?: LimitsSettings,
): Concern<SessionService> {
  const parts = createSessionsParts(services, settings, limits);
  return {
    ...parts,
    routes(app) {
      addSessionRoutes(app, { sessions: parts.api, trustedProxyHops: settings.trustedProxyHops });
      addLoginPages(app, { sessions: parts.api, trustedProxyHops: settings.trustedProxyHops });
      addAdminRoutes(app, { access: parts.api.access, now: services.now });
    },
  };
}
