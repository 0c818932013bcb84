/**
 * A real SMTP server in the test process (`smtp-server`, the protocol side of nodemailer's
 * project) on a free loopback port: it accepts every message (no TLS, no authentication:
 * loopback only) and keeps each one's envelope and raw text for the test to read.
 * @module
 */
import { Buffer } from "node:buffer";
import type { Server as NetServer, Socket } from "node:net";
import { SMTPServer } from "smtp-server";
import { freePort } from "./ports.ts";

/** One delivered message. */
export interface DeliveredMail {
  /** Envelope sender. */
  from: string | null;
  /** Envelope recipients. */
  to: string[];
  /** The message as received (headers and body). */
  raw: string;
}

/** A running SMTP server. */
export interface SmtpServer extends AsyncDisposable {
  /** smtp://127.0.0.1:<port> (for SMTP_URL). */
  url: string;
  /** Messages delivered so far, in order. */
  messages: DeliveredMail[];
}

/** Starts the server; `await using` stops it. */
export async function startSmtp(): Promise<SmtpServer> {
  const port = await freePort();
  const messages: DeliveredMail[] = [];
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS", "AUTH"],
    logger: false,
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        const from = session.envelope.mailFrom;
        messages.push({
          from: from ? from.address : null,
          to: session.envelope.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks).toString("utf8"),
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  // The raw sockets: smtp-server waits (on an unref'd timer) for a client's half-close,
  // which would leave the listener's close pending when the test ends.
  const listener = (server as unknown as { server: NetServer }).server;
  const sockets = new Set<Socket>();
  listener.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  return {
    url: `smtp://127.0.0.1:${port}`,
    messages,
    async [Symbol.asyncDispose]() {
      // Clients that said QUIT may hold their socket half-open (smtp-server waits for them
      // on an unref'd timer): end them. Under Deno the listener's "close" event does not
      // come once its handle is closed, so the check is `listening`, synchronously.
      for (const socket of sockets) socket.destroy();
      listener.close();
      if (listener.listening) throw new Error("the SMTP test server did not stop listening");
      await Promise.resolve();
    },
  };
}
