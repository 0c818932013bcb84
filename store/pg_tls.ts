/**
 * TLS to PostgreSQL from libpq-style URLs, so one URL serves the runtime's pools
 * (postgres.js) and the PostgreSQL programs (libpq reads the same parameters):
 * `?sslmode=verify-full&sslrootcert=/certs/ca.crt` verifies the server's certificate
 * against that CA and its name against the URL's host. postgres.js understands `sslmode`
 * but not `sslrootcert` (it would send it to the server as a setting), so this module
 * reads the CA file and hands postgres.js the TLS options instead.
 * @module
 */
import { RuntimeError } from "../lib/errors.ts";

/** What postgres.js gets for a URL: the URL without libpq-only parameters, plus options. */
export interface PgConnectArgs {
  /** The URL postgres.js connects to. */
  url: string;
  /** Options to merge into postgres.js's (`ssl` when a CA file is named). */
  options: { ssl?: { ca: string; rejectUnauthorized: true } };
}

/**
 * Splits a libpq-style URL for postgres.js. `sslmode=verify-full` (or `verify-ca`, checked
 * as strictly) with `sslrootcert=<file>` verifies against that CA; `sslrootcert=system` or
 * none uses the system's roots; other modes pass through to postgres.js. An unreadable CA
 * file is a CONFIG_INVALID error naming the file.
 */
export function pgConnectArgs(url: string): PgConnectArgs {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return { url, options: {} };
  }
  const params = parsed.searchParams;
  const rootCert = params.get("sslrootcert");
  if (rootCert === null) return { url, options: {} };
  params.delete("sslrootcert");
  const mode = params.get("sslmode");
  if (rootCert === "system") {
    // postgres.js's own meaning of sslrootcert=system: verify-full against the system roots.
    if (mode === null || mode === "verify-ca") params.set("sslmode", "verify-full");
    return { url: parsed.toString(), options: {} };
  }
  if (mode !== "verify-full" && mode !== "verify-ca") {
    throw new RuntimeError(
      "CONFIG_INVALID",
      `Invalid database URL: sslrootcert needs sslmode=verify-full (got ${
        mode === null ? "no sslmode" : `sslmode=${mode}`
      }): a CA that is not checked protects nothing`,
    );
  }
  params.delete("sslmode");
  let ca: string;
  try {
    ca = Deno.readTextFileSync(rootCert);
  } catch (err) {
    throw new RuntimeError(
      "CONFIG_INVALID",
      `Cannot read the database CA file ${rootCert} (sslrootcert): ${
        err instanceof Error ? err.message : String(err)
      }`,
      { cause: err },
    );
  }
  return { url: parsed.toString(), options: { ssl: { ca, rejectUnauthorized: true } } };
}
