/**
 * The passkey and e-mail code settings: defaults, a list of origins, and refusals that name
 * the variable (without echoing an SMTP password).
 */
import assert from "node:assert/strict";
import { loadSessionsSettings } from "../../actors/sessions/settings.ts";

Deno.test("passkey and SMTP settings", async (t) => {
  await t.step("defaults: localhost relying party, no SMTP", () => {
    const s = loadSessionsSettings({});
    assert.deepEqual(s.webauthn, {
      rpId: "localhost",
      rpName: "RootStream",
      origins: ["http://localhost:8080"],
    });
    assert.equal(s.smtp, null);
  });

  await t.step("several origins, and an SMTP server with its sender", () => {
    const s = loadSessionsSettings({
      WEBAUTHN_RP_ID: "example.com",
      WEBAUTHN_ORIGIN: "https://console.example.com, https://example.com",
      SMTP_URL: "smtps://codes:secret@mail.example.com:465",
      SMTP_FROM: "RootStream <codes@example.com>",
    });
    assert.deepEqual(s.webauthn.origins, ["https://console.example.com", "https://example.com"]);
    assert.equal(s.webauthn.rpId, "example.com");
    assert.deepEqual(s.smtp, {
      url: "smtps://codes:secret@mail.example.com:465",
      from: "RootStream <codes@example.com>",
      ca: null,
    });
  });

  await t.step("an RP id with a scheme, an origin with a path are refused by name", () => {
    assert.throws(
      () => loadSessionsSettings({ WEBAUTHN_RP_ID: "https://example.com" }),
      /WEBAUTHN_RP_ID must be a domain without scheme or port/,
    );
    assert.throws(
      () => loadSessionsSettings({ WEBAUTHN_ORIGIN: "https://example.com/console" }),
      /WEBAUTHN_ORIGIN must be origins scheme:\/\/host\[:port\]/,
    );
  });

  await t.step("a wrong SMTP_URL is refused without showing it (it may hold a password)", () => {
    assert.throws(
      () => loadSessionsSettings({ SMTP_URL: "http://user:hunter2@mail.example.com" }),
      (err: Error) => {
        assert.match(err.message, /SMTP_URL must be an smtp:\/\/ or smtps:\/\/ URL/);
        assert.ok(!err.message.includes("hunter2"));
        return true;
      },
    );
  });
});
