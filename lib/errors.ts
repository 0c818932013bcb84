/**
 * The runtime's one error type and its catalogue of codes.
 *
 * Every expected failure carries a stable `code` (for programs and the HTTP layer)
 * and a sentence-case human message with the detail after a colon, e.g.
 * `new RuntimeError("USER_EXISTS", "Cannot create user: the username is taken")`.
 * @module
 */

/** Error codes the runtime raises, mapped to the HTTP status the API answers with. */
export const ERROR_STATUS = {
  CONFIG_INVALID: 500,
  VALIDATION_FAILED: 400,
  NOT_FOUND: 404,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  REAUTH_REQUIRED: 403,
  REAUTH_FAILED: 403,
  ORIGIN_NOT_ALLOWED: 403,
  UNSUPPORTED_MEDIA_TYPE: 415,
  MACHINE_TOKEN_NOT_FOUND: 404,
  CONFLICT: 409,
  USER_EXISTS: 409,
  STREAM_NOT_FOUND: 404,
  USER_NOT_FOUND: 404,
  STREAM_STATE_INVALID: 409,
  EVENT_VERSION_CONFLICT: 409,
  DATABASE_UNAVAILABLE: 503,
  DATABASE_CONNECT_FAILED: 503,
  REDIS_UNAVAILABLE: 503,
  MIGRATION_CHECKSUM_MISMATCH: 500,
  MIGRATION_FAILED: 500,
  MIGRATION_INVALID: 500,
  REQUEST_TIMEOUT: 504,
  CLUSTER_UNAVAILABLE: 503,
  MESSAGE_INVALID: 400,
  ACTOR_NOT_FOUND: 404,
  ACTOR_UNAVAILABLE: 503,
  LEASE_STALE_TOKEN: 409,
  LEASE_NOT_HELD: 409,
  INVALID_CREDENTIALS: 401,
  SESSION_INVALID: 401,
  SESSION_EXPIRED: 401,
  SESSION_REVOKED: 401,
  SESSION_DEVICE_MISMATCH: 401,
  SESSION_NOT_FOUND: 404,
  LOGIN_EXPIRED: 401,
  LOGIN_BUSY: 409,
  MFA_INVALID_CODE: 401,
  MFA_LOCKED: 429,
  MFA_NOT_ENROLLED: 409,
  MFA_ALREADY_ENABLED: 409,
  WEBAUTHN_REFUSED: 401,
  WEBAUTHN_CREDENTIAL_EXISTS: 409,
  WEBAUTHN_NOT_FOUND: 404,
  EMAIL_SEND_FAILED: 502,
  RATE_LIMITED: 429,
  SECRET_KEY_MISMATCH: 500,
  SECRET_INVALID: 500,
  BACKUP_UNAVAILABLE: 503,
  BACKUP_NOT_FOUND: 404,
  BACKUP_BUSY: 409,
  BACKUP_FAILED: 500,
  BACKUP_CORRUPT: 422,
  BACKUP_KEY_MISMATCH: 422,
  BACKUP_VERIFY_FAILED: 500,
  RESTORE_FAILED: 500,
  RESTORE_TARGET_EXISTS: 409,
  PITR_TARGET_NOT_REACHED: 422,
  PG_TOOL_FAILED: 500,
  STORAGE_FAILED: 503,
  WAL_ARCHIVE_FAILED: 503,
  DATABASE_NOT_PRIMARY: 503,
  DATABASE_STALE_EPOCH: 409,
  REPLICATION_UNAVAILABLE: 503,
  FAILOVER_IN_PROGRESS: 409,
  FAILOVER_REFUSED: 409,
  FAILOVER_TIMEOUT: 504,
  REJOIN_FAILED: 500,
  METRICS_UNAVAILABLE: 503,
  METRICS_QUERY_FAILED: 502,
  SYNC_UNAVAILABLE: 503,
  STATE_NOT_FOUND: 404,
  STATE_WRITE_DISABLED: 403,
  SYNC_CONFLICT_NOT_FOUND: 404,
  URI_TOO_LONG: 414,
  HEADERS_TOO_LARGE: 431,
  STREAMS_PER_CLIENT_EXCEEDED: 429,
  STREAMS_EXHAUSTED: 503,
  SERVER_BUSY: 503,
  INTERNAL: 500,
} as const;

/** A code from the catalogue. */
export type ErrorCode = keyof typeof ERROR_STATUS;

/** An error with a stable code and a human sentence; `cause` keeps the underlying error. */
export class RuntimeError extends Error {
  /** Stable, machine-readable code from the catalogue. */
  readonly code: ErrorCode;
  /** Optional structured detail safe to show to the caller (never secrets). */
  readonly details?: Record<string, unknown>;

  /** Creates an error; `options.cause` keeps the underlying error for logs. */
  constructor(
    code: ErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "RuntimeError";
    this.code = code;
    this.details = options.details;
  }

  /** The HTTP status this error maps to. */
  get status(): number {
    return ERROR_STATUS[this.code];
  }

  /** The JSON body the API answers with. */
  toJSON(): { error: { code: ErrorCode; message: string; details?: Record<string, unknown> } } {
    return {
      error: {
        code: this.code,
        message: this.message,
        ...(this.details ? { details: this.details } : {}),
      },
    };
  }
}

/** True when `err` is a RuntimeError, optionally with the given code. */
export function isRuntimeError(err: unknown, code?: ErrorCode): err is RuntimeError {
  return err instanceof RuntimeError && (code === undefined || err.code === code);
}

/** A short, single-line description of any thrown value, for logs and messages. */
export function describeError(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return code && typeof code === "string" && !err.message.includes(code)
      ? `${err.message} (${code})`
      : err.message;
  }
  return String(err);
}
