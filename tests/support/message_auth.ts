/**
 * Message authentication for tests that build buses, transports and stores by hand: they
 * must seal with the key of the instances they talk to (lib/message_auth.ts).
 * @module
 */
import { Buffer } from "node:buffer";
import { createMessageAuth, type MessageAuth } from "../../lib/message_auth.ts";

/** The sealer of instances configured with `RS_SECRET_KEY=<keyBase64>`. */
export function authFor(keyBase64: string, previousBase64?: string): MessageAuth {
  return createMessageAuth(new Uint8Array(Buffer.from(keyBase64, "base64")), {
    previous: previousBase64 ? new Uint8Array(Buffer.from(previousBase64, "base64")) : null,
  });
}

/** A random 32-byte key, base64. */
export function randomKeyBase64(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64");
}

/** A sealer with a random key, for tests whose parts only talk to each other. */
export function testAuth(): MessageAuth {
  return authFor(randomKeyBase64());
}
