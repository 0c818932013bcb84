/**
 * The e-mail sender of the sessions concern: nodemailer over SMTP (SMTP_URL; STARTTLS when
 * the server offers it, smtps:// for implicit TLS). One transport per service, made on the first
 * message (nodemailer is loaded then: ~5 MB resident an idle instance need not carry), closed
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

/** Creates the SMTP mailer. */
export function createSmtpMailer(options: { url: string; from: string }): Mailer {
  let transport: Promise<Transporter> | null = null;
  let closed = false;
  const open = () =>
    transport ??= import("nodemailer").then((m) => m.default.createTransport(options.url));
  return {
    async send(message) {
      try {
        if (closed) throw new Error("the mailer is closed");
        await (await open()).sendMail({ from: options.from, ...message });
      } catch (err) {
        throw new RuntimeError(
          "EMAIL_SEND_FAILED",
          `Cannot send the e-mail: ${(err as Error).message ?? String(err)}`,
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
