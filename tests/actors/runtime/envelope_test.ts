import assert from "node:assert/strict";
import fc from "fast-check";
import { z } from "zod";
import { checkEnvelope, isEvent } from "../../../actors/runtime/envelope.ts";

// The zod schema the hand-written check replaced (actors/runtime/transport.ts before): both
// must accept and refuse the same envelopes, and answer the same object.
const idPart = z.string().min(1).max(128).regex(/^[\w.:-]+$/);
const address = z.object({ instance: idPart, actor: idPart });
const eventSchema = z.object({ type: z.string().min(1).max(128) }).catchall(z.unknown());
const envelopeSchema = z.discriminatedUnion("kind", [
  z.object({
    v: z.literal(1),
    kind: z.enum(["send", "broadcast", "request"]),
    id: z.string().min(1).max(64),
    from: address,
    to: z.object({ instance: idPart.or(z.literal("*")), actor: idPart }),
    event: eventSchema,
    corr: z.string().max(64).optional(),
    sentAt: z.number(),
  }),
  z.object({
    v: z.literal(1),
    kind: z.literal("reply"),
    id: z.string().min(1).max(64),
    corr: z.string().min(1).max(64),
    sentAt: z.number(),
    ok: z.boolean(),
    result: z.unknown().optional(),
    error: z.object({ code: z.string(), message: z.string() }).optional(),
  }),
]);

/** Field values that are sometimes valid and sometimes not. */
const anyId = fc.oneof(
  fc.constantFrom("a", "node-1", "diag.x:y", "*", "", "has space", "x".repeat(129), "é"),
  fc.string({ maxLength: 4 }),
  fc.integer(),
);
const anyAddress = fc.oneof(
  fc.record({ instance: anyId, actor: anyId }),
  fc.constantFrom(null, "x", [], {}),
);
const anyEvent = fc.oneof(
  fc.record({ type: fc.oneof(fc.constantFrom("diag.ping", "", "t".repeat(129)), fc.integer()) }),
  fc.record({ type: fc.constant("diag.note"), text: fc.string() }),
  fc.constantFrom(null, "e", [], {}),
);
const anyEnvelope = fc.record({
  v: fc.constantFrom(1, 2, "1"),
  kind: fc.constantFrom("send", "broadcast", "request", "reply", "other", 3),
  id: fc.oneof(fc.uuid(), fc.constantFrom("", "i".repeat(65)), fc.integer()),
  from: anyAddress,
  to: anyAddress,
  event: anyEvent,
  corr: fc.oneof(fc.uuid(), fc.constantFrom("", "c".repeat(65), undefined), fc.integer()),
  sentAt: fc.oneof(fc.integer(), fc.constantFrom("1", null)),
  ok: fc.oneof(fc.boolean(), fc.constantFrom("yes", undefined)),
  result: fc.oneof(fc.jsonValue(), fc.constant(undefined)),
  error: fc.oneof(
    fc.record({ code: fc.string(), message: fc.string() }),
    fc.constantFrom(undefined, null, { code: 1, message: "m" }, "e"),
  ),
  extra: fc.jsonValue(),
}, { requiredKeys: [] });

Deno.test("the envelope check accepts and refuses exactly what the zod schema did", () => {
  let accepted = 0;
  fc.assert(
    fc.property(anyEnvelope, (raw) => {
      // Through JSON, as messages arrive.
      const json = JSON.parse(JSON.stringify(raw));
      const expected = envelopeSchema.safeParse(json);
      const got = checkEnvelope(json);
      assert.equal(typeof got !== "string", expected.success, JSON.stringify(json));
      if (expected.success) {
        accepted++;
        assert.deepEqual(got, expected.data);
      }
    }),
    { numRuns: 5000 },
  );
  // Both sides of the comparison were exercised.
  assert.ok(accepted > 20, `${accepted} valid envelopes generated`);
});

Deno.test("the envelope check: known cases", () => {
  const send = {
    v: 1,
    kind: "send",
    id: "m1",
    from: { instance: "a", actor: "runtime" },
    to: { instance: "b", actor: "diagnostics" },
    event: { type: "diag.note", text: "hi" },
    sentAt: 1,
    junk: true,
  };
  // Unknown fields are left out, as the schema did.
  assert.deepEqual(checkEnvelope(send), {
    v: 1,
    kind: "send",
    id: "m1",
    from: { instance: "a", actor: "runtime" },
    to: { instance: "b", actor: "diagnostics" },
    event: { type: "diag.note", text: "hi" },
    sentAt: 1,
  });
  assert.equal(typeof checkEnvelope({ ...send, to: { instance: "*", actor: "x" } }), "object");
  assert.match(checkEnvelope({ ...send, from: { instance: "*", actor: "x" } }) as string, /from/);
  assert.match(checkEnvelope({ ...send, event: { type: "" } }) as string, /event/);
  assert.match(checkEnvelope("x") as string, /not an object/);
  assert.equal(isEvent({ type: "a" }), true);
  assert.equal(isEvent({ type: 1 }), false);
  assert.equal(isEvent(null), false);
});
