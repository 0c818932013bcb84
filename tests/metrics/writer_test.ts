import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import type { MetricPoint } from "../../lib/line_protocol.ts";
import { createPromQlReader } from "../../actors/metrics/promql_reader.ts";
import { backoffMs, createInfluxWriter, type WriterStats } from "../../actors/metrics/writer.ts";
import { eventually, startVictoriaMetrics } from "../support/metrics_servers.ts";

function points(measurement: string, n: number, start: number, offset = 0): MetricPoint[] {
  return Array.from({ length: n }, (_, i) => ({
    measurement,
    tags: { stream_id: String((offset + i) % 50), host: "bench-host" },
    fields: { count: offset + i },
    time: start + offset + i,
  }));
}

function balanced(s: WriterStats): boolean {
  return s.accepted === s.written + s.droppedTotal + s.buffered + s.inflight;
}

/** A local HTTP server whose answers a test scripts. */
function fakeServer(answer: (body: Uint8Array, req: Request) => Promise<Response>) {
  const requests: { body: Uint8Array; encoding: string | null; auth: string | null }[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const body = new Uint8Array(await req.arrayBuffer());
    requests.push({
      body,
      encoding: req.headers.get("content-encoding"),
      auth: req.headers.get("authorization"),
    });
    return await answer(body, req);
  });
  return {
    url: `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`,
    requests,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}

Deno.test("backoff is jittered exponential and respects Retry-After", () => {
  const opts = { minMs: 100, maxMs: 1000 };
  assert.equal(backoffMs(1, { ...opts, random: () => 1 }), 100);
  assert.equal(backoffMs(3, { ...opts, random: () => 1 }), 400);
  assert.equal(backoffMs(10, { ...opts, random: () => 1 }), 1000);
  assert.equal(backoffMs(10, { ...opts, random: () => 0 }), 50, "never below half the minimum");
  assert.equal(backoffMs(4, { ...opts, random: () => 0.5 }), 400);
  assert.equal(backoffMs(1, { ...opts, random: () => 0, retryAfterMs: 3000 }), 3000);
});

Deno.test("writer against VictoriaMetrics", async (t) => {
  await using vm = await startVictoriaMetrics();
  const reader = createPromQlReader({ url: vm.url });
  const start = Date.now() - 10 * 60_000;

  await t.step("write → read back the exact count", async () => {
    const writer = createInfluxWriter({ url: vm.url, org: "o", bucket: "b", batchSize: 1500 });
    for (let i = 0; i < 20; i++) writer.write(points("exact", 1000, start, i * 1000));
    const stats = await writer.flush();
    assert.equal(stats.written, 20_000);
    assert.equal(stats.droppedTotal, 0);
    assert.equal(stats.requests, Math.ceil(20_000 / 1500));
    await writer.close();
    await vm.flush();
    const n = await reader.count({
      measurement: "exact",
      field: "count",
      start: start - 1,
      end: start + 20_000,
    });
    assert.equal(n, 20_000);
  });

  await t.step("gzip, when enabled, is applied and accepted", async () => {
    const writer = createInfluxWriter({
      url: vm.url,
      org: "o",
      bucket: "b",
      gzipThresholdBytes: 1,
    });
    writer.write(points("zipped", 5000, start));
    const stats = await writer.close();
    assert.equal(stats.written, 5000);
    await vm.flush();
    assert.equal(
      await reader.count({
        measurement: "zipped",
        field: "count",
        start: start - 1,
        end: start + 5000,
      }),
      5000,
    );
  });

  await t.step(
    "server down for a while: bounded buffer, counted drops, no blocking, recovery",
    async () => {
      const writer = createInfluxWriter({
        url: vm.url,
        org: "o",
        bucket: "b",
        batchSize: 1000,
        maxBufferedPoints: 5000,
        flushIntervalMs: 20,
        minRetryDelayMs: 50,
        maxRetryDelayMs: 200,
        timeoutMs: 2000,
      });
      writer.write(points("outage", 1000, start));
      assert.equal((await writer.flush()).written, 1000);

      await vm.stop();
      const requestsBefore = writer.stats().requests;
      const outageStarted = performance.now();
      for (let i = 1; i <= 60; i++) {
        // write() hands nothing back to wait on: it cannot block on the dead server (how long
        // a synchronous call takes on a busy machine says nothing about that).
        const handed: unknown = writer.write(points("outage", 1000, start, i * 1000));
        assert.equal(handed, undefined, "write() returns nothing to await");
        assert.ok(writer.stats().buffered <= 5000, "the buffer never exceeds its bound");
        await new Promise((r) => setTimeout(r, 5));
      }
      await eventually(() => writer.stats().failedRequests >= 3, { what: "retries" });
      const down = writer.stats();
      const outageMs = performance.now() - outageStarted;
      assert.equal(down.state, "retrying");
      assert.ok(down.buffered <= 5000);
      assert.ok(down.inflight <= 1000, "one probe batch at a time while failing");
      assert.ok(down.dropped.buffer_full >= 60_000 - 5000 - 1000);
      assert.ok(balanced(down), JSON.stringify(down));
      assert.match(down.lastError ?? "", /refused|connect/i);
      // Backoff, not a stampede: at most one request per 25 ms of outage.
      assert.ok(
        down.requests - requestsBefore <= outageMs / 25 + 2,
        `${down.requests - requestsBefore} requests in ${outageMs} ms`,
      );

      await vm.start();
      const after = await writer.flush({ timeoutMs: 20_000 });
      assert.equal(after.state, "idle");
      assert.equal(after.buffered, 0);
      assert.equal(after.inflight, 0);
      assert.equal(after.written + after.droppedTotal, 61_000);
      assert.equal(after.dropped.buffer_full, after.droppedTotal);
      assert.ok(after.written >= 1000 + 5000);
      assert.equal(after.lastError, null);
      await writer.close();
      await vm.flush();
      const stored = await reader.count({
        measurement: "outage",
        field: "count",
        start: start - 1,
        end: start + 61_000,
      });
      assert.equal(stored, after.written, "the server holds exactly the confirmed points");
    },
  );
});

Deno.test("writer against a scripted server", async (t) => {
  const start = Date.now() - 60_000;

  await t.step("retries 503 after Retry-After, with the token and precision ms", async () => {
    let calls = 0;
    const times: number[] = [];
    await using server = fakeServer(() => {
      times.push(performance.now());
      calls++;
      return Promise.resolve(
        calls === 1
          ? new Response("busy", { status: 503, headers: { "retry-after": "1" } })
          : new Response(null, { status: 204 }),
      );
    });
    const writer = createInfluxWriter({
      url: server.url,
      token: "s3cret",
      org: "acme",
      bucket: "metrics",
      minRetryDelayMs: 10,
    });
    writer.write(points("m", 10, start));
    const stats = await writer.flush({ timeoutMs: 10_000 });
    assert.equal(stats.written, 10);
    assert.equal(stats.retries, 1);
    assert.ok(times[1] - times[0] >= 950, `retried after ${times[1] - times[0]} ms`);
    assert.equal(server.requests[0].auth, "Token s3cret");
    const lines = new TextDecoder().decode(server.requests[1].body).trimEnd().split("\n");
    assert.equal(lines.length, 10);
    assert.equal(lines[0], `m,stream_id=0,host=bench-host count=0 ${start}`);
    await writer.close();
  });

  await t.step("a 400 is counted as rejected and not retried", async () => {
    await using server = fakeServer(() =>
      Promise.resolve(Response.json({ code: "invalid", message: "bad line" }, { status: 400 }))
    );
    const writer = createInfluxWriter({ url: server.url, org: "o", bucket: "b" });
    writer.write(points("m", 7, start));
    const stats = await writer.flush();
    assert.equal(stats.dropped.rejected, 7);
    assert.equal(stats.requests, 1);
    assert.match(stats.lastError ?? "", /HTTP 400/);
    assert.equal(stats.state, "idle", "a rejection says nothing about the server's health");
    await writer.close();
  });

  await t.step("a hung request times out and is retried", async () => {
    let calls = 0;
    const release = Promise.withResolvers<void>();
    await using server = fakeServer(async () => {
      calls++;
      if (calls === 1) await release.promise;
      return new Response(null, { status: 204 });
    });
    const writer = createInfluxWriter({
      url: server.url,
      org: "o",
      bucket: "b",
      timeoutMs: 150,
      minRetryDelayMs: 10,
    });
    writer.write(points("m", 5, start));
    const stats = await writer.flush({ timeoutMs: 5000 });
    release.resolve();
    assert.equal(stats.written, 5);
    assert.equal(stats.failedRequests, 1);
    await writer.close();
  });

  await t.step("a batch failing for maxRetryTimeMs is dropped and counted", async () => {
    await using server = fakeServer(() => Promise.resolve(new Response("down", { status: 500 })));
    const writer = createInfluxWriter({
      url: server.url,
      org: "o",
      bucket: "b",
      minRetryDelayMs: 20,
      maxRetryDelayMs: 40,
      maxRetryTimeMs: 200,
    });
    writer.write(points("m", 3, start));
    const stats = await writer.flush({ timeoutMs: 5000 });
    assert.equal(stats.dropped.retry_exhausted, 3);
    assert.ok(stats.retries >= 2);
    await writer.close();
  });

  await t.step("gzip bodies decompress to the same lines", async () => {
    await using server = fakeServer(() => Promise.resolve(new Response(null, { status: 204 })));
    const writer = createInfluxWriter({
      url: server.url,
      org: "o",
      bucket: "b",
      gzipThresholdBytes: 100,
    });
    writer.write(points("m", 20, start));
    await writer.flush();
    assert.equal(server.requests[0].encoding, "gzip");
    const text = new TextDecoder().decode(gunzipSync(server.requests[0].body)).trimEnd();
    assert.equal(text.split("\n").length, 20);
    await writer.close();
  });

  await t.step("close() with the server down counts what was left, and later writes", async () => {
    await using server = fakeServer(() => Promise.resolve(new Response("x", { status: 503 })));
    const writer = createInfluxWriter({
      url: server.url,
      org: "o",
      bucket: "b",
      batchSize: 10,
      minRetryDelayMs: 10_000,
    });
    writer.write(points("m", 25, start));
    await eventually(() => writer.stats().failedRequests >= 1, {
      what: "a failed request to the refusing server",
    });
    const stats = await writer.close({ timeoutMs: 100 });
    assert.equal(stats.state, "closed");
    assert.equal(stats.dropped.closed, 25);
    assert.equal(stats.written, 0);
    writer.write(points("m", 2, start));
    assert.equal(writer.stats().dropped.closed, 27);
    assert.ok(balanced(writer.stats()));
  });

  await t.step("batches cut across writes by count and size, in order, UTF-8 intact", async () => {
    await using server = fakeServer(() => Promise.resolve(new Response(null, { status: 204 })));
    const writer = createInfluxWriter({
      url: server.url,
      org: "o",
      bucket: "b",
      batchSize: 10,
      concurrency: 1,
      flushIntervalMs: 10_000,
    });
    const all: MetricPoint[] = [];
    for (let w = 0; w < 3; w++) {
      const chunk = Array.from({ length: 7 }, (_, i) => ({
        measurement: "m",
        tags: { city: "Zürich 東京", n: String(w * 7 + i) },
        fields: { v: w * 7 + i },
        time: start + w * 7 + i,
      }));
      all.push(...chunk);
      writer.write(chunk);
    }
    const stats = await writer.flush();
    assert.equal(stats.written, 21);
    const bodies = server.requests.map((r) =>
      new TextDecoder().decode(r.body).trimEnd().split("\n")
    );
    assert.deepEqual(bodies.map((b) => b.length), [10, 10, 1]);
    const sent = bodies.flat();
    assert.equal(sent[0], `m,city=Zürich\\ 東京,n=0 v=0 ${start}`);
    assert.deepEqual(sent.map((l) => Number(/ v=(\d+) /.exec(l)![1])), all.map((p) => p.fields.v));
    assert.equal(stats.bytesWritten, server.requests.reduce((a, r) => a + r.body.length, 0));
    await writer.close();

    const small = createInfluxWriter({
      url: server.url,
      org: "o",
      bucket: "b",
      maxBatchBytes: 120,
    });
    small.write(points("m", 9, start));
    const s2 = await small.close();
    assert.equal(s2.written, 9);
    assert.ok(server.requests.slice(3).every((r) => r.body.length <= 120));
    assert.ok(server.requests.length - 3 >= 4, "bodies were cut to stay under maxBatchBytes");
  });

  await t.step("one write larger than the buffer keeps only the newest points", async () => {
    await using server = fakeServer(() => Promise.resolve(new Response(null, { status: 204 })));
    const writer = createInfluxWriter({
      url: server.url,
      org: "o",
      bucket: "b",
      maxBufferedPoints: 20,
    });
    writer.write(points("m", 50, start));
    const stats = await writer.close();
    assert.equal(stats.dropped.buffer_full, 30);
    assert.equal(stats.written, 20);
    const first = new TextDecoder().decode(server.requests[0].body).split("\n")[0];
    assert.match(first, / count=30 /);
  });

  await t.step("writeLines refuses a line that would split into several", async () => {
    await using server = fakeServer(() => Promise.resolve(new Response(null, { status: 204 })));
    const writer = createInfluxWriter({ url: server.url, org: "o", bucket: "b" });
    writer.writeLines(["a v=1 1", "b v=2 2\nevil v=3 3", "", "c v=4 4"]);
    const stats = await writer.close();
    assert.equal(stats.written, 2);
    assert.equal(stats.dropped.invalid, 2);
    assert.equal(new TextDecoder().decode(server.requests[0].body), "a v=1 1\nc v=4 4\n");
  });

  await t.step("invalid points are counted, not sent", async () => {
    await using server = fakeServer(() => Promise.resolve(new Response(null, { status: 204 })));
    const writer = createInfluxWriter({ url: server.url, org: "o", bucket: "b" });
    writer.write([
      { measurement: "", fields: { v: 1 }, time: start },
      { measurement: "m", fields: { v: NaN }, time: start },
      { measurement: "m", fields: { v: 1 }, time: start },
    ]);
    const stats = await writer.close();
    assert.equal(stats.dropped.invalid, 2);
    assert.equal(stats.written, 1);
    assert.ok(balanced(stats));
  });
});
