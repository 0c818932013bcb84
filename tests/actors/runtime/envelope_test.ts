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
const anyValue = fc.oneof(
  anyId,
  fc.record({ instance: anyId, actor: anyId }),
  fc.record({ type: fc.oneof(fc.constantFrom("diag.ping", "", "t".repeat(129)), fc.integer()) }),
  fc.record({ code: fc.string(), message: fc.string() }),
  fc.constantFrom(null, [], {}, 1, 2, "1", true, "c".repeat(65), { code: 1, message: "m" }),
  fc.jsonValue(),
);
const validInbound = fc.record({
  v: fc.constant(1),
  kind: fc.constantFrom("send", "broadcast", "request"),
  id: fc.uuid(),
  from: fc.record({ instance: fc.constantFrom("a", "node-1"), actor: fc.constant("runtime") }),
  to: fc.record({ instance: fc.constantFrom("b", "*"), actor: fc.constant("diagnostics") }),
  event: fc.record({ type: fc.constant("diag.note"), text: fc.string() }),
  corr: fc.option(fc.uuid(), { nil: undefined }),
  sentAt: fc.integer(),
  extra: fc.jsonValue(),
}, { requiredKeys: ["v", "kind", "id", "from", "to", "event", "sentAt"] });
const validReply = fc.record({
  v: fc.constant(1),
  kind: fc.constant("reply"),
  id: fc.uuid(),
  corr: fc.uuid(),
  sentAt: fc.integer(),
  ok: fc.boolean(),
  result: fc.jsonValue(),
  error: fc.record({ code: fc.string(), message: fc.string() }),
}, { requiredKeys: ["v", "kind", "id", "corr", "sentAt", "ok"] });
const FIELDS = [
  "v",
  "kind",
  "id",
  "from",
  "to",
  "event",
  "corr",
  "sentAt",
  "ok",
  "result",
  "error",
  "extra",
];
/** A valid envelope with 0 to 2 fields replaced by arbitrary values or removed. */
const anyEnvelope = fc.tuple(
  fc.oneof(validInbound, validReply),
  fc.array(fc.tuple(fc.constantFrom(...FIELDS), fc.option(anyValue)), { maxLength: 2 }),
).map(([env, changes]) => {
  const out: Record<string, unknown> = { ...env };
  for (const [field, value] of changes) {
    if (value === null) delete out[field];
    else out[field] = value;
  }
  return out;
});

Deno.test("the envelope check accepts and refuses exactly what the zod schema did", () => {
  let accepted = 0, refused = 0;
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
      } else refused++;
    }),
    { numRuns: 5000 },
  );
  // Both sides of the comparison were exercised.
  assert.ok(accepted > 500 && refused > 500, `${accepted} valid, ${refused} invalid envelopes`);
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
