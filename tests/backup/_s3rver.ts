/**
 * Runs s3rver (an S3-compatible server speaking the S3 REST protocol) as its own process
 * for the storage tests: `deno run -A tests/backup/_s3rver.ts <dir> <port>`. Prints
 * `listening <port>` on stdout once it accepts requests.
 * @module
 */
import S3rver from "s3rver";

const [dir, portArg] = Deno.args;
const server = new S3rver({
  directory: dir,
  port: Number(portArg ?? 0),
  address: "127.0.0.1",
  silent: true,
  configureBuckets: [{ name: "rs-backups", configs: [] }],
});
const { port } = await server.run();
console.log(`listening ${port}`);
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, async () => {
    await server.close();
    Deno.exit(0);
  });
}
