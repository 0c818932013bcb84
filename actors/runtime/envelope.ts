/**
 * The transport's envelope: its shape and the one check every inbound message passes at the
 * edge (after its MAC verified, before anything in it is believed).
 *
 * The check is written out by hand rather than as a zod schema: it runs for every message and
 * every reply, and the schema's discriminated union cost more than the HMAC
 * (tests/actors/runtime/envelope_test.ts holds the zod schema it replaced and checks both
 * accept and refuse the same envelopes). Like the schema, it returns a new object with the
 * known fields only; the event keeps its own fields, the receiving actor's schema checks them.
 * @module
 */

/** An actor address inside an envelope. */
export interface EnvelopeAddress {
  instance: string;
  actor: string;
}

/** An addressed message, broadcast or request. */
export interface InboundEnvelope {
  v: 1;
  kind: "send" | "broadcast" | "request";
  id: string;
  from: EnvelopeAddress;
  to: EnvelopeAddress;
  event: { type: string; [k: string]: unknown };
  corr?: string;
  sentAt: number;
}

/** A reply to a request. */
export interface ReplyEnvelope {
  v: 1;
  kind: "reply";
  id: string;
  corr: string;
  sentAt: number;
  ok: boolean;
  result?: unknown;
  error?: { code: string; message: string };
}

/** Any envelope. */
export type Envelope = InboundEnvelope | ReplyEnvelope;

const ID_PART = /^[\w.:-]+$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function idPart(v: unknown, star = false): v is string {
  if (typeof v !== "string") return false;
  if (star && v === "*") return true;
  return v.length >= 1 && v.length <= 128 && ID_PART.test(v);
}

function str(v: unknown, min: number, max: number): v is string {
  return typeof v === "string" && v.length >= min && v.length <= max;
}

function address(v: unknown, star: boolean): EnvelopeAddress | null {
  if (!isObject(v) || !idPart(v.instance, star) || !idPart(v.actor)) return null;
  return { instance: v.instance as string, actor: v.actor as string };
}

/** The event of an outgoing or incoming message: an object with a string `type` (1–128). */
export function isEvent(v: unknown): v is { type: string; [k: string]: unknown } {
  return isObject(v) && str(v.type, 1, 128);
}

/** The envelope `json` (already parsed) is, or the first reason it is not one. */
export function checkEnvelope(json: unknown): Envelope | string {
  if (!isObject(json)) return "not an object";
  if (json.v !== 1) return "v: expected 1";
  if (!str(json.id, 1, 64)) return "id: a string of 1 to 64 characters";
  if (typeof json.sentAt !== "number") return "sentAt: expected a number";
  const kind = json.kind;
  if (kind === "reply") {
    if (!str(json.corr, 1, 64)) return "corr: a string of 1 to 64 characters";
    if (typeof json.ok !== "boolean") return "ok: expected a boolean";
    const out: ReplyEnvelope = {
      v: 1,
      kind,
      id: json.id,
      corr: json.corr,
      sentAt: json.sentAt,
      ok: json.ok,
    };
    if ("result" in json && json.result !== undefined) out.result = json.result;
    if (json.error !== undefined) {
      const e = json.error;
      if (!isObject(e) || typeof e.code !== "string" || typeof e.message !== "string") {
        return "error: expected {code, message}";
      }
      out.error = { code: e.code, message: e.message };
    }
    return out;
  }
  if (kind !== "send" && kind !== "broadcast" && kind !== "request") {
    return "kind: expected send, broadcast, request or reply";
  }
  const from = address(json.from, false);
  if (!from) return "from: expected {instance, actor}";
  const to = address(json.to, true);
  if (!to) return "to: expected {instance, actor}";
  if (!isEvent(json.event)) return "event: expected an object with a string type";
  if (json.corr !== undefined && !str(json.corr, 0, 64)) return "corr: at most 64 characters";
  const out: InboundEnvelope = {
    v: 1,
    kind,
    id: json.id,
    from,
    to,
    event: json.event,
    sentAt: json.sentAt,
  };
  if (json.corr !== undefined) out.corr = json.corr as string;
  return out;
}
