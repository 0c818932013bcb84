/**
 * The e-mail sender of the sessions concern: nodemailer over SMTP (SMTP_URL; STARTTLS when
 * the server offers it, smtps:// for implicit TLS; the server's certificate verified against
 * the system's CAs, or SMTP_CA_FILE's). One transport per service, made on the first
 * message (nodemailer is loaded then: ~7 MB resident an idle instance need not carry, `deno task bench
 * imports`), closed
 * with the service.
 * @module
 */
import type { Transporter } from "nodemailer";
import { RuntimeError } from "../../lib/errors.ts";

/** A message to send. */
export interface MailMessage {
  /** Recipient address. */
  to: string;
  /** Subject line. */
  subject: string;
  /** Plain-text body. */
  text: string;
}

/** What sends messages. */
export interface Mailer {
  /** Sends one message; EMAIL_SEND_FAILED when the server refuses or cannot be reached. */
  send(message: MailMessage): Promise<void>;
  /** Closes the transport's connections. */
  close(): void;
}

/** Creates the SMTP mailer; `ca`: PEM certificates trusted for the server's TLS certificate. */
export function createSmtpMailer(
  options: { url: string; from: string; ca?: string | null },
): Mailer {
  let transport: Promise<Transporter> | null = null;
  let closed = false;
  // The server's certificate is always verified (nodemailer's default); SMTP_CA_FILE only
  // says which CA to verify it against. With credentials in an smtp:// URL, STARTTLS is
  // required: a server (or a man in the middle) that does not offer it never gets the
  // password in clear.
  const url = new URL(options.url);
  const requireTLS = url.protocol === "smtp:" && url.username !== "";
  const open = () =>
    transport ??= import("nodemailer").then((m) =>
      m.default.createTransport({
        url: options.url,
        ...(requireTLS ? { requireTLS } : {}),
        ...(options.ca ? { tls: { ca: options.ca } } : {}),
      })
    );
  return {
    async send(message) {
      try {
        if (closed) throw new Error("the mailer is closed");
        await (await open()).sendMail({ from: options.from, ...message });
      } catch (err) {
        // A socket error after connecting is most often TLS: under Deno a refused server
        // certificate surfaces only as "write UNKNOWN" (code ESOCKET).
        const hint = (err as { code?: string }).code === "ESOCKET"
          ? " (if the server uses TLS, check that its certificate is trusted (SMTP_CA_FILE))"
          : "";
        throw new RuntimeError(
          "EMAIL_SEND_FAILED",
          `Cannot send the e-mail: ${(err as Error).message ?? String(err)}${hint}`,
          { cause: err, details: { retryAfterMs: 30_000 } },
        );
      }
    },
    close() {
      closed = true;
      void transport?.then((t) => t.close(), () => {});
    },
  };
}
