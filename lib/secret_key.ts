/**
 * The key that encrypts secrets at rest (RS_SECRET_KEY).
 *
 * When it is not configured, a random key is generated once into `<dataDir>/secret.key`
 * (mode 0600) and reused, so a single instance works out of the box; a cluster must
 * set the same RS_SECRET_KEY on every instance, and start-up says so.
 * @module
 */
import { RuntimeError } from "./errors.ts";

/** Where the key came from. */
export type SecretKeySource = "env" | "file" | "generated";

/** Returns the configured key, or reads / creates `<dataDir>/secret.key`. */
export async function loadSecretKey(
  configured: Uint8Array | null,
  options: { dataDir: string },
): Promise<{ key: Uint8Array; source: SecretKeySource; path?: string }> {
  if (configured) return { key: configured, source: "env" };
  const path = `${options.dataDir.replace(/\/$/, "")}/secret.key`;
  try {
    const text = (await Deno.readTextFile(path)).trim();
    const bin = atob(text);
    if (bin.length !== 32) throw new Error("not 32 bytes");
    return { key: Uint8Array.from(bin, (c) => c.charCodeAt(0)), source: "file", path };
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new RuntimeError(
        "CONFIG_INVALID",
        `The secret key file ${path} is unreadable or corrupt: ${
          err instanceof Error ? err.message : err
        }. HINT: restore it from backup or set RS_SECRET_KEY`,
        { cause: err },
      );
    }
  }
  await Deno.mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  const key = crypto.getRandomValues(new Uint8Array(32));
  await Deno.writeTextFile(path, btoa(String.fromCharCode(...key)) + "\n", {
    mode: 0o600,
    createNew: true,
  });
  return { key, source: "generated", path };
}
