/**
 * State synchronisation across two instances, as in the planning document: a change on
 * one instance is seen by a subscriber on the other; concurrent viewer joins add up.
 *
 * Run: DATABASE_URL=postgres://… REDIS_URL=redis://… deno run -A examples/state_sync.ts
 * (two instances need a shared PostgreSQL and Redis).
 */
import { createRuntime } from "../mod.ts";

const env = Deno.env.toObject();
if (!env.DATABASE_URL || !env.REDIS_URL) {
  console.error("Set DATABASE_URL and REDIS_URL: two instances share them.");
  Deno.exit(2);
}
const dir = await Deno.makeTempDir({ prefix: "rs-example-sync-" });
const key = env.RS_SECRET_KEY ??
  btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
const start = (id: string) =>
  createRuntime({
    env: { ...env, RS_SECRET_KEY: key, RS_INSTANCE_ID: id, RS_DATA_DIR: `${dir}/${id}` },
  }, { serve: false });
const [a, b] = [await start("example-a"), await start("example-b")];
/** Waits until `check` holds (the nodes need a moment to join and catch up). */
async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

try {
  await until(
    () => [a, b].every((rs) => rs.sync.stats().caughtUp && rs.sync.stats().linkUp),
    "both sync nodes to be live",
  );
  const streamId = crypto.getRandomValues(new Uint32Array(1))[0];
  const seen = new Promise<unknown>((resolve) => {
    const off = b.sync.subscribe("stream.*", (channel, data) => {
      off();
      resolve({ channel, data });
    });
  });
  a.sync.publish("stream.started", { streamId, userId: 1, resolution: "1920x1080" });
  console.log("instance b received", JSON.stringify(await seen));

  // Viewer counts merge as a counter: joins on both instances add up, none is lost.
  a.sync.applyDelta("stream", streamId, { viewers: { inc: 3 } });
  b.sync.applyDelta("stream", streamId, { viewers: { inc: 2 } });
  await Promise.all([a.sync.flush(), b.sync.flush()]);
  const deadline = Date.now() + 10_000;
  let views: unknown[] = [];
  while (Date.now() < deadline) {
    views = [a, b].map((rs) => rs.sync.getSnapshot("stream", streamId)?.state);
    if (views.every((v) => (v as { viewers?: number } | undefined)?.viewers === 5)) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  console.log("stream state on a and b:", JSON.stringify(views));
  if (!views.every((v) => (v as { viewers?: number } | undefined)?.viewers === 5)) {
    throw new Error("the instances did not converge");
  }
} finally {
  await a.stop();
  await b.stop();
  await Deno.remove(dir, { recursive: true });
}
