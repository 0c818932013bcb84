/**
 * The one declaration of a route: method, path, who may call it, its request schemas
 * (params, query, body) and its responses. From it
 *
 * - the route's guard enforces the caller, the CSRF rules and the body's media type and
 *   size before anything else runs (api/authz/guard.ts),
 * - the zod schemas validate the request (through `@hono/zod-openapi`),
 * - `/openapi.json` (OpenAPI 3.1) is generated, with the access rule of every operation in
 *   `x-rootstream-access` and its accepted credentials in `security`,
 * - docs/security.md's route table is generated (cli/routes_doc.ts),
 * - the authorisation matrix test calls every route as every kind of caller.
 *
 * Declare a route with {@linkcode declareRoute} in the api module that serves it, export
 * the declarations, list them in concerns/routes.ts, and register the handler with
 * {@linkcode serve}. The app refuses to start with a route that has no declaration.
 * @module
 */
import {
  createRoute,
  type OpenAPIHono,
  type RouteConfig,
  type RouteHandler,
  z,
} from "@hono/zod-openapi";
import { RuntimeError } from "../../lib/errors.ts";
import { guard } from "./guard.ts";
import type { Access, RouteKind } from "./types.ts";

export { type Access, type Caller, CALLERS, type RouteKind } from "./types.ts";

/** The part of a declaration beyond `@hono/zod-openapi`'s RouteConfig. */
export interface RouteExtras {
  /** Who may call it. */
  access: Access;
  /** What it answers with (default `json`). */
  kind?: RouteKind;
  /** Largest body read, in bytes (routes with a body; default 64 KiB). */
  maxBody?: number;
  /**
   * The sentence a request failing the schemas is refused with (VALIDATION_FAILED);
   * default: the first issue, naming the field.
   */
  invalid?: string;
}

/** A declared route: an OpenAPI route config with its access rule. */
export type DeclaredRoute<R extends RouteConfig = RouteConfig> = R & {
  readonly "x-rootstream-access": Access;
  readonly "x-rootstream-kind": RouteKind;
};

/** The shared error body: `{ error: { code, message, details? } }`. */
export const ErrorBody = z.object({
  error: z.object({
    code: z.string().openapi({ example: "UNAUTHORIZED" }),
    message: z.string(),
    details: z.record(z.string(), z.unknown()).optional(),
  }),
}).openapi("Error");

/** A JSON response of `schema`, described. */
export function jsonResponse<S extends z.ZodType>(
  schema: S,
  description: string,
): { description: string; content: { "application/json": { schema: S } } } {
  return { description, content: { "application/json": { schema } } };
}

/** A JSON request body of `schema` (required unless `required: false`). */
export function jsonBody<S extends z.ZodType>(
  schema: S,
  options: { required?: boolean; description?: string } = {},
): { required: boolean; description?: string; content: { "application/json": { schema: S } } } {
  return {
    required: options.required ?? true,
    ...(options.description ? { description: options.description } : {}),
    content: { "application/json": { schema } },
  };
}

/** A form request body (`application/x-www-form-urlencoded`) of `schema`. */
export function formBody<S extends z.ZodType>(
  schema: S,
): { required: true; content: { "application/x-www-form-urlencoded": { schema: S } } } {
  return { required: true, content: { "application/x-www-form-urlencoded": { schema } } };
}

function errorResponse(description: string) {
  return jsonResponse(ErrorBody, description);
}

/** The credentials a route accepts, as OpenAPI security requirements (any one suffices). */
function securityOf(access: Access): Record<string, string[]>[] {
  const scope = access.scope ? [access.scope] : [];
  switch (access.caller) {
    case "anonymous":
      return access.details
        ? [{}, { sessionCookie: [] }, { bearer: [] }, { adminToken: [] }, {
          machineToken: [access.details.scope],
        }]
        : [{}];
    case "user":
      return [{ sessionCookie: [] }, { bearer: [] }];
    case "operator":
      return [
        { sessionCookie: [] },
        { bearer: [] },
        { adminToken: [] },
        ...(access.scope ? [{ machineToken: scope }] : []),
      ];
    case "admin":
      return [{ sessionCookie: [] }, { bearer: [] }, { adminToken: [] }];
    case "machine":
      return [{ machineToken: scope }];
  }
}

/** The error responses every route of this access rule can give, by status. */
function errorResponsesOf(
  access: Access,
  request: RouteConfig["request"],
): Record<number, ReturnType<typeof errorResponse>> {
  const out: Record<number, ReturnType<typeof errorResponse>> = {};
  if (request?.params || request?.query || request?.body) {
    out[400] = errorResponse("The request does not match its schema (VALIDATION_FAILED)");
  }
  if (access.caller !== "anonymous") {
    out[401] = errorResponse("No valid credential (UNAUTHORIZED, SESSION_EXPIRED, ...)");
    out[403] = errorResponse(
      access.stepUp || access.caller === "admin"
        ? "The caller may not do this (FORBIDDEN), or must re-authenticate first (REAUTH_REQUIRED)"
        : "The caller may not do this (FORBIDDEN)",
    );
  }
  const content = request?.body?.content ?? {};
  if (Object.keys(content).length) {
    out[403] ??= errorResponse("A cookie request from a foreign origin (ORIGIN_NOT_ALLOWED)");
    out[415] = errorResponse(
      `The body is not ${Object.keys(content).join(" or ")} (UNSUPPORTED_MEDIA_TYPE)`,
    );
  }
  return out;
}

/**
 * Declares a route. `path` is in OpenAPI form (`/state/{type}/{id}`); `responses` are the
 * route's own (its success and its specific errors); the errors of its access rule,
 * validation and media type are added here, and so are its guard and its `security`.
 */
export function declareRoute<const R extends RouteConfig>(
  config: R & RouteExtras,
): DeclaredRoute<Omit<R, keyof RouteExtras>> {
  const { access, kind = "json", maxBody, invalid, ...route } = config;
  if (access.caller === "machine" && !access.scope) {
    throw new Error(`${route.method.toUpperCase()} ${route.path}: a machine route needs a scope`);
  }
  const declared = createRoute({
    ...route,
    responses: { ...errorResponsesOf(access, route.request), ...route.responses },
    security: securityOf(access),
    middleware: [guard({ access, kind, maxBody, request: route.request })],
    "x-rootstream-access": access,
    "x-rootstream-kind": kind,
  } as unknown as R);
  // Not enumerable: the hook reads it, the OpenAPI document does not show it.
  Object.defineProperty(declared, "invalid", { value: invalid, enumerable: false });
  return declared as unknown as DeclaredRoute<Omit<R, keyof RouteExtras>>;
}

/** A route's handler: the validated input is typed; it answers with any Response. */
export type LooseHandler<R extends RouteConfig> = (
  c: Parameters<RouteHandler<R>>[0],
) => Response | Promise<Response>;

/** Registers `handler` for the declared `route` on `app` (validation, then the handler). */
export function serve<R extends RouteConfig>(
  app: OpenAPIHono,
  route: DeclaredRoute<R>,
  handler: LooseHandler<R>,
): void {
  const invalid = (route as unknown as { invalid?: string }).invalid;
  // deno-lint-ignore no-explicit-any
  const hook = (invalid ? failWith(invalid) : undefined) as any;
  app.openapi(route, handler as unknown as RouteHandler<R>, hook);
}

/** The validation hook of a route that states its own sentence for any invalid request. */
function failWith(message: string) {
  return (result: { success: boolean }) => {
    if (!result.success) throw new RuntimeError("VALIDATION_FAILED", message);
  };
}
