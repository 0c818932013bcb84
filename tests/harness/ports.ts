/**
 * Free TCP ports on 127.0.0.1 for throw-away servers.
 * @module
 */

const handedOut = new Set<number>();

/** A free TCP port on 127.0.0.1, never the same one twice in this process (module instance). */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    listener.close();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
    // Yield so the kernel's ephemeral allocator moves on before the next try.
    await Promise.resolve();
  }
  throw new Error("Cannot find a free port: 100 attempts returned ports already handed out");
}
