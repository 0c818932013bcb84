/**
 * A postmaster.pid left behind by a postmaster killed with SIGKILL names a pid that may since
 * belong to any other process (pid_max is 32,768 on many hosts): the failover's "kill the
 * unresponsive old primary on this host" and the test harness's teardown must not signal it.
 */
import assert from "node:assert/strict";
import { localPostmaster } from "../../actors/failover/rejoin.ts";
import { isProcessStartedAt } from "../../lib/process.ts";
import { postmasterPid } from "../support/pg_cluster.ts";

Deno.test({
  name: "postmaster.pid: a pid is believed only while its process started when the file says",
  sanitizeOps: true,
  sanitizeResources: true,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "rs-pmpid-" });
    // A live process that is not the postmaster the file was written by: it started now.
    const other = new Deno.Command("sleep", { args: ["30"] }).spawn();
    try {
      const now = Date.now();
      const write = (startedS: number) =>
        Deno.writeTextFile(
          `${dir}/postmaster.pid`,
          `${other.pid}\n${dir}\n${startedS}\n5432\n/tmp\n127.0.0.1\n  5432001  0\nready   \n`,
        );
      const identity = (startedAt: number) => ({
        dataDir: dir,
        port: 5432,
        startedAt,
        commandLine: {},
      });

      // The file and the server's identity agree on an old start; the pid is another process's.
      const oldS = Math.floor(now / 1000) - 3600;
      await write(oldS);
      assert.equal(isProcessStartedAt(other.pid, oldS * 1000), false);
      assert.equal(await localPostmaster(identity(oldS * 1000)), null);
      assert.equal(postmasterPid(dir), null);

      // The process that really started then is believed.
      const nowS = Math.floor(now / 1000);
      await write(nowS);
      assert.equal(isProcessStartedAt(other.pid, nowS * 1000), true);
      assert.equal(await localPostmaster(identity(nowS * 1000)), other.pid);
      assert.equal(postmasterPid(dir), other.pid);
    } finally {
      other.kill("SIGKILL");
      await other.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
});
