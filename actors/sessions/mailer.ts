/**
 * The e-mail sender of the sessions concern: nodemailer over SMTP (SMTP_URL; STARTTLS when
 * the server offers it, smtps:// for implicit TLS). One transport per service, closed with it.
 * @module
 */
import nodemailer from "nodemailer";
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
  const transport = nodemailer.createTransport(options.url);
  return {
    async send(message) {
      try {
        await transport.sendMail({ from: options.from, ...message });
      } catch (err) {
        throw new RuntimeError(
          "EMAIL_SEND_FAILED",
          `Cannot send the e-mail: ${(err as Error).message ?? String(err)}`,
          { cause: err, details: { retryAfterMs: 30_000 } },
        );
      }
    },
    close() {
      transport.close();
    },
  };
}
