/**
 * lib/settings.ts: every concern reads its variables the same way — empty counts as unset,
 * every bad one named in one sentence, secrets and credentials in URLs never shown.
 */
import assert from "node:assert/strict";
import { z } from "zod";
import { parseSettings, pickSettings, shownValue } from "../../lib/settings.ts";
import { loadFailoverSettings } from "../../actors/failover/settings.ts";

Deno.test("settings reader", async (t) => {
  await t.step("picks the set variables of a group; empty ones count as unset", () => {
    assert.deepEqual(pickSettings({ A: "1", B: "", C: "3", D: "4" }, ["A", "B", "C"]), {
      A: "1",
      C: "3",
    });
  });

  await t.step("names every bad variable once, with what it must be", () => {
    const schema = z.object({
      PORT: z.string().regex(/^\d+$/, { message: "an integer" }).transform(Number),
      MODE: z.enum(["on", "off"], { message: "must be on or off" }),
    });
    assert.throws(() => parseSettings(schema, { PORT: "x", MODE: "maybe" }, { extra: ["ALSO"] }), {
      name: "RuntimeError",
      message: 'Invalid configuration: PORT must be an integer, got "x"; ' +
        'MODE must be on or off, got "maybe"; ALSO',
    });
    assert.deepEqual(parseSettings(schema, { PORT: "8080", MODE: "on" }), {
      PORT: 8080,
      MODE: "on",
    });
  });

  await t.step("never shows secrets or credentials in URLs", () => {
    assert.equal(shownValue("RS_SECRET_KEY", "k"), "<hidden>");
    assert.equal(shownValue("RS_ADMIN_TOKEN", "t"), "<hidden>");
    assert.equal(shownValue("SMTP_PASSWORD", "p"), "<hidden>");
    assert.equal(shownValue("BACKUP_ENCRYPTION_KEY", "k"), "<hidden>");
    assert.equal(
      shownValue("SMTP_URL", "smtp://u:hunter2@mail"),
      "<hidden: it may hold a password>",
    );
    assert.equal(shownValue("RS_PORT", "http"), '"http"');
    // A concern's own message: the password in a node's URL is not repeated back.
    assert.throws(
      () => loadFailoverSettings({ DATABASE_NODES: "pg1=mysql://app:hunter2@db/app" }),
      (err: Error) => {
        assert.match(err.message, /DATABASE_NODES must be a postgres:\/\/ URL/);
        assert.ok(!err.message.includes("hunter2"), err.message);
        return true;
      },
    );
  });
});
