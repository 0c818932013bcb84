import assert from "node:assert/strict";
import {
  formatBytes,
  formatDuration,
  formatProgress,
  ProgressMeter,
  terminalProgress,
} from "../../actors/backup/progress.ts";
import { backupView } from "../../api/backup.ts";
import type { BackupRecord } from "../../store/backup_history.ts";

Deno.test("progress: rate and ETA since the phase began", () => {
  let now = 1_000_000;
  const meter = new ProgressMeter(() => now);
  assert.equal(meter.snapshot(), null);
  meter.update({ phase: "dumping", bytes: 0, total: 1000e6 });
  now += 10_000;
  meter.update({ phase: "dumping", bytes: 250e6, total: 1000e6 });
  const snap = meter.snapshot()!;
  assert.equal(snap.phase, "dumping");
  assert.equal(snap.bytesDone, 250e6);
  assert.equal(snap.bytesPerSecond, 25e6);
  assert.equal(snap.etaSeconds, 30);
  assert.equal(
    formatProgress(snap),
    "dumping  250.0 MB / 1.0 GB (25 %)  25.0 MB/s  ETA 30 s",
  );
  // A new phase restarts the rate; an unknown total has no ETA.
  meter.update({ phase: "checking", bytes: 0, total: null });
  now += 2000;
  meter.update({ phase: "checking", bytes: 4e6, total: null });
  assert.equal(meter.snapshot()!.etaSeconds, null);
  assert.equal(formatProgress(meter.snapshot()!), "checking  4.0 MB  2.0 MB/s");
  meter.update({ phase: "restoring", bytes: 1e6, total: 2e6 });
  assert.equal(formatProgress(meter.snapshot()!), "restoring  1.0 MB / 2.0 MB (50 %)");
  assert.equal(formatBytes(999), "999 B");
  assert.equal(formatBytes(1_234_567_890), "1.2 GB");
  assert.equal(formatDuration(3725), "1 h 02 min");
  assert.equal(formatDuration(185), "3 min 05 s");
});

Deno.test("progress: drawn on a terminal, silent otherwise", () => {
  const written: string[] = [];
  const out = (terminal: boolean) => ({
    isTerminal: () => terminal,
    writeSync: (bytes: Uint8Array) => {
      written.push(new TextDecoder().decode(bytes));
      return bytes.length;
    },
  });
  const quiet = terminalProgress({ out: out(false) });
  assert.equal(quiet.listener, null);
  quiet.done();
  assert.equal(written.length, 0);

  let now = 0;
  const bar = terminalProgress({ out: out(true), everyMs: 250, now: () => now });
  bar.listener!({ phase: "unpacking", bytes: 0, total: 100e6 });
  now += 100;
  bar.listener!({ phase: "unpacking", bytes: 10e6, total: 100e6 }); // too soon: not drawn
  now += 200;
  bar.listener!({ phase: "unpacking", bytes: 30e6, total: 100e6 });
  bar.done();
  assert.equal(written.length, 3);
  assert.ok(written[1].startsWith("\r\x1b[2K"), JSON.stringify(written[1]));
  assert.match(written[1], /unpacking {2}30\.0 MB \/ 100\.0 MB \(30 %\)/);
  assert.match(written[1], /ETA 1 s$/);
  assert.equal(written[2], "\r\x1b[2K");
});

Deno.test("progress: the API shows it while a backup runs, not after", () => {
  const progress = { phase: "dumping", bytesDone: 5, bytesTotal: 10, etaSeconds: 1 };
  const record = {
    id: 1,
    name: "20250101T000000Z-full-abcdef",
    type: "full",
    path: "file:///x/",
    backupSize: 0,
    compressedSize: null,
    encryptionMethod: null,
    status: "in_progress",
    startedAt: new Date(0),
    completedAt: null,
    errorMessage: null,
    metadata: { progress },
    parentId: null,
    trigger: "manual",
    instanceId: null,
    verifiedAt: null,
    verification: null,
    deletedAt: null,
  } satisfies BackupRecord;
  assert.deepEqual(backupView(record).progress, progress);
  assert.equal(backupView({ ...record, status: "completed" }).progress, null);
});
