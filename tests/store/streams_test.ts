import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import postgres from "postgres";
import { isRuntimeError } from "../../lib/errors.ts";
import { startPostgres } from "../harness/mod.ts";
import { migrate } from "../../store/migrations.ts";
import {
  addBytesTransferred,
  createStreamSession,
  endStreamSession,
  getOpenSession,
  getStreamSession,
  listSessionsForStream,
  updateViewerStats,
} from "../../store/stream_sessions.ts";
import {
  createStream,
  getStreamById,
  getStreamByKey,
  listLiveStreams,
  listStreamsForUser,
  resetStreamKey,
  startStream,
  stopStream,
  updateStreamStats,
  updateViewerCount,
} from "../../store/streams.ts";
import type { Sql } from "../../store/types.ts";
import { createUser } from "../../store/users.ts";

const INJECTIONS = [
  "'; DROP TABLE users; --",
  "Robert'); DELETE FROM streams;--",
  "\\' OR 1=1 --",
  "1; UPDATE streams SET is_live = true; --",
];

function rejectsWith(code: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(isRuntimeError(err), `expected a RuntimeError, got ${err}`);
    assert.equal(err.code, code, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

let counter = 0;
async function newUser(sql: Sql): Promise<number> {
  const n = ++counter;
  const user = await createUser(sql, {
    username: `streamer${n}`,
    email: `streamer${n}@example.com`,
    password: "streamer-password",
  }, { hashing: { ln: 10 } });
  return user.id;
}

Deno.test("streams store", async (t) => {
  await using pg = await startPostgres();
  const sql = postgres(await pg.createDatabase(), { max: 4, onnotice: () => {} });
  try {
    await migrate(sql);
    const userId = await newUser(sql);

    await t.step("create returns the key once and stores only its hash and prefix", async () => {
      const { stream, streamKey } = await createStream(sql, {
        userId,
        name: "Speedrun night",
        description: "Any% attempts",
      });
      assert.match(streamKey, /^live_[A-Za-z0-9_-]{43}$/);
      assert.equal(stream.userId, userId);
      assert.equal(stream.name, "Speedrun night");
      assert.equal(stream.description, "Any% attempts");
      assert.equal(stream.isLive, false);
      assert.equal(stream.viewerCount, 0);
      assert.equal(stream.isPublic, true);
      assert.ok(streamKey.startsWith(stream.streamKeyPrefix));
      assert.ok(stream.streamKeyPrefix.length < 16);
      assert.ok(!Object.values(stream).includes(streamKey));
      assert.ok(!Object.keys(stream).some((k) => /hash/i.test(k)));

      // The table holds no plain key anywhere, only SHA-256(key).
      const [row] = await sql<Record<string, unknown>[]>`
        SELECT * FROM streams WHERE id = ${stream.id}`;
      const text = JSON.stringify(row, (_k, v) => typeof v === "bigint" ? String(v) : v);
      assert.ok(!text.includes(streamKey.slice(5)), "plain key found in the row");
      const expected = createHash("sha256").update(streamKey).digest();
      assert.deepEqual(new Uint8Array(row.stream_key_hash as Uint8Array), new Uint8Array(expected));
      assert.equal(row.stream_key_prefix, stream.streamKeyPrefix);

      const other = await createStream(sql, { userId, name: "Second" });
      assert.notEqual(other.streamKey, streamKey);
    });

    await t.step("lookup by key finds the stream; other keys find nothing", async () => {
      const { stream, streamKey } = await createStream(sql, { userId, name: "Key lookup" });
      assert.deepEqual(await getStreamByKey(sql, streamKey), stream);
      assert.deepEqual(await getStreamById(sql, stream.id), stream);
      const wrong = streamKey.slice(0, -1) + (streamKey.endsWith("A") ? "B" : "A");
      assert.equal(await getStreamByKey(sql, wrong), null);
      assert.equal(await getStreamByKey(sql, ""), null);
      assert.equal(await getStreamByKey(sql, "live_"), null);
      for (const text of INJECTIONS) assert.equal(await getStreamByKey(sql, text), null);
      // The hash itself is not a key: knowing the stored value does not let anyone in.
      const [row] = await sql<{ h: string }[]>`
        SELECT encode(stream_key_hash, 'hex') AS h FROM streams WHERE id = ${stream.id}`;
      assert.equal(await getStreamByKey(sql, row.h), null);
      assert.equal(await getStreamById(sql, 999_999), null);
    });

    await t.step("resetting the key invalidates the old one", async () => {
      const { stream, streamKey: oldKey } = await createStream(sql, { userId, name: "Reset" });
      const { stream: after, streamKey: newKey } = await resetStreamKey(sql, stream.id);
      assert.notEqual(newKey, oldKey);
      assert.ok(newKey.startsWith(after.streamKeyPrefix));
      assert.equal(await getStreamByKey(sql, oldKey), null);
      assert.equal((await getStreamByKey(sql, newKey))?.id, stream.id);
      await assert.rejects(resetStreamKey(sql, 999_999), rejectsWith("STREAM_NOT_FOUND"));
    });

    await t.step("SQL-injection strings in name and description are stored verbatim", async () => {
      const [{ before }] = await sql<{ before: number }[]>`
        SELECT count(*)::int AS before FROM streams`;
      for (const text of INJECTIONS) {
        const { stream } = await createStream(sql, { userId, name: text, description: text });
        assert.equal(stream.name, text);
        assert.equal(stream.description, text);
        const loaded = await getStreamById(sql, stream.id);
        assert.equal(loaded?.name, text);
        assert.equal(loaded?.description, text);
      }
      const [{ after, live }] = await sql<{ after: number; live: number }[]>`
        SELECT count(*)::int AS after, count(*) FILTER (WHERE is_live)::int AS live FROM streams`;
      assert.equal(after, before + INJECTIONS.length);
      assert.equal(live, 0);
      const [tables] = await sql<{ users: string | null; streams: string | null }[]>`
        SELECT to_regclass('users')::text AS users, to_regclass('streams')::text AS streams`;
      assert.deepEqual(tables, { users: "users", streams: "streams" });
    });

    await t.step("invalid input is VALIDATION_FAILED naming the field", async () => {
      const cases: [() => Promise<unknown>, RegExp][] = [
        [() => createStream(sql, { userId, name: "" }), /name/],
        [() => createStream(sql, { userId, name: "   " }), /name/],
        [() => createStream(sql, { userId, name: "n".repeat(201) }), /name/],
        [
          () => createStream(sql, { userId, name: "ok", description: "d".repeat(5001) }),
          /description/,
        ],
        [() => createStream(sql, { userId, name: "nul\u0000" }), /name/],
        [() => createStream(sql, { userId: -3, name: "ok" }), /userId/],
        [() => createStream(sql, { userId: "1" as never, name: "ok" }), /userId/],
        [() => getStreamById(sql, 1.5), /id/],
        [() => getStreamByKey(sql, 42 as never), /key/],
        [() => listLiveStreams(sql, { limit: 0 }), /limit/],
        [() => listLiveStreams(sql, { limit: 101 }), /limit/],
      ];
      for (const [call, field] of cases) {
        await assert.rejects(call(), rejectsWith("VALIDATION_FAILED", field));
      }
      await assert.rejects(
        createStream(sql, { userId: 999_999, name: "Orphan" }),
        rejectsWith("USER_NOT_FOUND"),
      );
    });

    await t.step("start opens a session; starting a live stream again is refused", async () => {
      const { stream } = await createStream(sql, { userId, name: "Start twice" });
      const started = await startStream(sql, stream.id);
      assert.equal(started.stream.isLive, true);
      assert.ok(started.stream.startedAt instanceof Date);
      assert.equal(started.stream.endedAt, null);
      assert.ok(started.session);
      assert.equal(started.session.streamId, stream.id);
      assert.equal(started.session.endedAt, null);
      assert.equal(started.session.durationSeconds, null);
      assert.deepEqual(await getOpenSession(sql, stream.id), started.session);

      await assert.rejects(
        startStream(sql, stream.id),
        rejectsWith("STREAM_STATE_INVALID", /already live/),
      );
      assert.equal((await listSessionsForStream(sql, stream.id)).length, 1);
      await assert.rejects(startStream(sql, 999_999), rejectsWith("STREAM_NOT_FOUND"));
    });

    await t.step("of concurrent starts exactly one wins", async () => {
      const { stream } = await createStream(sql, { userId, name: "Race" });
      const results = await Promise.allSettled(
        Array.from({ length: 4 }, () => startStream(sql, stream.id)),
      );
      const won = results.filter((r) => r.status === "fulfilled");
      const lost = results.filter((r) => r.status === "rejected");
      assert.equal(won.length, 1);
      for (const r of lost) {
        assert.ok(isRuntimeError((r as PromiseRejectedResult).reason, "STREAM_STATE_INVALID"));
      }
      assert.equal((await listSessionsForStream(sql, stream.id)).length, 1);
    });

    await t.step("stop closes the session with its duration", async () => {
      const { stream } = await createStream(sql, { userId, name: "Duration" });
      const { session } = await startStream(sql, stream.id);
      assert.ok(session);
      // Pretend the broadcast began 75 seconds ago.
      await sql`
        UPDATE stream_sessions SET started_at = started_at - interval '75 seconds'
        WHERE id = ${session.id}`;
      await sql`
        UPDATE streams SET started_at = started_at - interval '75 seconds'
        WHERE id = ${stream.id}`;
      await updateViewerCount(sql, stream.id, { viewers: 12 });
      const stopped = await stopStream(sql, stream.id);
      assert.equal(stopped.stream.isLive, false);
      assert.equal(stopped.stream.viewerCount, 0);
      assert.ok(stopped.stream.endedAt && stopped.stream.startedAt);
      assert.ok(stopped.stream.endedAt >= stopped.stream.startedAt);
      assert.ok(stopped.session);
      assert.equal(stopped.session.id, session.id);
      assert.ok(stopped.session.endedAt);
      assert.ok(
        stopped.session.durationSeconds! >= 75 && stopped.session.durationSeconds! <= 80,
        `duration ${stopped.session.durationSeconds}`,
      );
      assert.equal(stopped.session.peakViewers, 12);
      assert.equal(await getOpenSession(sql, stream.id), null);

      await assert.rejects(
        stopStream(sql, stream.id),
        rejectsWith("STREAM_STATE_INVALID", /not live/),
      );
      await assert.rejects(stopStream(sql, 999_999), rejectsWith("STREAM_NOT_FOUND"));

      // A second broadcast gets a new session; history lists newest first.
      const again = await startStream(sql, stream.id);
      assert.equal(again.stream.endedAt, null);
      assert.ok(again.session && again.session.id !== session.id);
      await stopStream(sql, stream.id);
      const history = await listSessionsForStream(sql, stream.id);
      assert.deepEqual(history.map((s) => s.id), [again.session.id, session.id]);
      assert.equal((await listSessionsForStream(sql, stream.id, { limit: 1 })).length, 1);
    });

    await t.step("viewer counts require a live stream and raise the session peak", async () => {
      const { stream } = await createStream(sql, { userId, name: "Viewers" });
      await assert.rejects(
        updateViewerCount(sql, stream.id, { viewers: 3 }),
        rejectsWith("STREAM_STATE_INVALID"),
      );
      const { session } = await startStream(sql, stream.id);
      assert.equal((await updateViewerCount(sql, stream.id, { viewers: 40 })).viewerCount, 40);
      assert.equal((await updateViewerCount(sql, stream.id, { viewers: 25 })).viewerCount, 25);
      assert.equal((await getStreamSession(sql, session!.id))?.peakViewers, 40);
      await assert.rejects(
        updateViewerCount(sql, stream.id, { viewers: -1 }),
        rejectsWith("VALIDATION_FAILED", /viewers/),
      );
      await assert.rejects(
        updateViewerCount(sql, 999_999, { viewers: 1 }),
        rejectsWith("STREAM_NOT_FOUND"),
      );
    });

    await t.step("the live directory lists public live streams by audience", async () => {
      const owner = await newUser(sql);
      const make = async (name: string, viewers: number, isPublic = true) => {
        const { stream } = await createStream(sql, { userId: owner, name, isPublic });
        await startStream(sql, stream.id);
        await updateViewerCount(sql, stream.id, { viewers });
        return stream.id;
      };
      await sql`UPDATE streams SET is_live = false WHERE is_live`;
      await sql`UPDATE stream_sessions SET ended_at = now() WHERE ended_at IS NULL`;
      const small = await make("small", 5);
      const big = await make("big", 500);
      const medium = await make("medium", 50);
      await make("private", 10_000, false);
      const { stream: offline } = await createStream(sql, { userId: owner, name: "offline" });
      const live = await listLiveStreams(sql);
      assert.deepEqual(live.map((s) => s.id), [big, medium, small]);
      assert.ok(!live.some((s) => s.id === offline.id));
      assert.deepEqual((await listLiveStreams(sql, { limit: 2 })).map((s) => s.id), [big, medium]);
      assert.equal((await listStreamsForUser(sql, owner)).length, 5);
    });

    await t.step("stream stats are validated and stored", async () => {
      const { stream } = await createStream(sql, { userId, name: "Stats" });
      const updated = await updateStreamStats(sql, stream.id, {
        bitrateKbps: 6000,
        fps: 60,
        resolution: "1920x1080",
        codec: "h264",
      });
      assert.equal(updated.bitrateKbps, 6000);
      assert.equal(updated.fps, 60);
      assert.equal(updated.resolution, "1920x1080");
      assert.equal(updated.codec, "h264");
      const partial = await updateStreamStats(sql, stream.id, { fps: 30 });
      assert.equal(partial.fps, 30);
      assert.equal(partial.resolution, "1920x1080");
      const bad: [Record<string, unknown>, RegExp][] = [
        [{ resolution: "1080p" }, /resolution/],
        [{ resolution: "0x0" }, /resolution/],
        [{ resolution: "1920x1080; DROP TABLE streams" }, /resolution/],
        [{ fps: -1 }, /fps/],
        [{ fps: 29.97 }, /fps/],
        [{ bitrateKbps: 2_000_000 }, /bitrateKbps/],
        [{ codec: "h264'; --" }, /codec/],
      ];
      for (const [stats, field] of bad) {
        await assert.rejects(
          updateStreamStats(sql, stream.id, stats),
          rejectsWith("VALIDATION_FAILED", field),
        );
      }
      assert.deepEqual(await getStreamById(sql, stream.id), partial);
      await assert.rejects(
        updateStreamStats(sql, 999_999, { fps: 30 }),
        rejectsWith("STREAM_NOT_FOUND"),
      );
    });

    await t.step("stream sessions: one open at a time, stats, bytes, end", async () => {
      const { stream } = await createStream(sql, { userId, name: "Sessions" });
      const session = await createStreamSession(sql, stream.id);
      await assert.rejects(
        createStreamSession(sql, stream.id),
        rejectsWith("STREAM_STATE_INVALID", /already has an open session/),
      );
      await assert.rejects(createStreamSession(sql, 999_999), rejectsWith("STREAM_NOT_FOUND"));

      await updateViewerStats(sql, session.id, { totalViewers: 100, peakViewers: 30 });
      const stats = await updateViewerStats(sql, session.id, {
        totalViewers: 120,
        peakViewers: 20,
      });
      assert.equal(stats.totalViewers, 120);
      assert.equal(stats.peakViewers, 30, "the peak never goes down");
      await assert.rejects(
        updateViewerStats(sql, session.id, { totalViewers: -1, peakViewers: 0 }),
        rejectsWith("VALIDATION_FAILED", /totalViewers/),
      );

      // Concurrent increments from many reporters all count.
      await Promise.all(
        Array.from(
          { length: 20 },
          (_, i) => addBytesTransferred(sql, session.id, { bytes: i + 1 }),
        ),
      );
      const big = await addBytesTransferred(sql, session.id, { bytes: 5_000_000_000n });
      assert.equal(big.bytesTransferred, 210 + 5_000_000_000);
      await assert.rejects(
        addBytesTransferred(sql, session.id, { bytes: -5 }),
        rejectsWith("VALIDATION_FAILED", /bytes/),
      );
      await assert.rejects(
        addBytesTransferred(sql, 999_999, { bytes: 1 }),
        rejectsWith("NOT_FOUND"),
      );

      const ended = await endStreamSession(sql, session.id);
      assert.ok(ended.endedAt && ended.endedAt >= ended.startedAt);
      assert.equal(typeof ended.durationSeconds, "number");
      await assert.rejects(
        endStreamSession(sql, session.id),
        rejectsWith("STREAM_STATE_INVALID", /already ended/),
      );
      await assert.rejects(endStreamSession(sql, 999_999), rejectsWith("NOT_FOUND"));
      assert.equal(await getStreamSession(sql, 999_999), null);
      assert.equal(await getOpenSession(sql, stream.id), null);

      // The database itself refuses impossible rows, whatever the caller does.
      await assert.rejects(
        sql`UPDATE stream_sessions SET ended_at = started_at - interval '1 second'
            WHERE id = ${session.id}`,
        (err: unknown) => (err as { code?: string }).code === "23514",
      );
      await assert.rejects(
        sql`UPDATE streams SET viewer_count = -1 WHERE id = ${stream.id}`,
        (err: unknown) => (err as { code?: string }).code === "23514",
      );
    });
  } finally {
    await sql.end();
  }
});
