/**
 * Authorisation of the HTTP API: the one declaration of every route (`declareRoute`,
 * `serve`), the guard that enforces it, who is calling (`createAuthorizer`), peer
 * signatures between instances, and the access settings. docs/security.md explains the
 * model and lists every route (generated from the declarations).
 * @module
 */
export {
  type Access,
  type Caller,
  CALLERS,
  type DeclaredRoute,
  declareRoute,
  ErrorBody,
  formBody,
  jsonBody,
  jsonResponse,
  type LooseHandler,
  type RouteKind,
  serve,
} from "./declare.ts";
export {
  type AuthBackend,
  type Authorizer,
  type AuthorizerOptions,
  type CookiePolicy,
  cookiePolicy,
  createAuthorizer,
  internalEnv,
  type Principal,
} from "./authorizer.ts";
export { authorize, authorizerOf, principalOf, seesDetails } from "./guard.ts";
export { createPeerSigner, PEER_HEADER, type PeerSigner } from "./peer.ts";
export { createStreamLimiter, type StreamLimiter, type StreamLimiterOptions } from "./streams.ts";
export {
  ACCESS_CONFIG,
  ACCESS_SETTINGS,
  type AccessSettings,
  canonicalOrigin,
  loadAccessSettings,
} from "./settings.ts";
