/**
 * A real SMTP server in the test process (`smtp-server`, the protocol side of nodemailer's
 * project) on a free loopback port: it accepts every message (no TLS, no authentication:
 * loopback only) and keeps each one's envelope and raw text for the test to read. And
 * {@linkcode startSmtpTls}: the same server with STARTTLS and AUTH, run by Node.
 * @module
 */
import { Buffer } from "node:buffer";
import type { Server as NetServer, Socket } from "node:net";
import { SMTPServer } from "smtp-server";
import { HarnessError, runOk } from "./_process.ts";
import { freePort } from "./ports.ts";

/** One delivered message. */
export interface DeliveredMail {
  /** Envelope sender. */
  from: string | null;
  /** Envelope recipients. */
  to: string[];
  /** The message as received (headers and body). */
  raw: string;
  /** Delivered over TLS (the STARTTLS server only). */
  secure?: boolean;
  /** The account that authenticated, or null (the STARTTLS server only). */
  user?: string | null;
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

/** Options of {@linkcode startSmtpTls}. */
export interface SmtpTlsOptions {
  /** A directory of the test's: the CA and the server's key and certificate are made here. */
  dir: string;
  /** The one account AUTH accepts. */
  user: string;
  /** Its password. */
  pass: string;
}

/** A running SMTP server with STARTTLS and AUTH. */
export interface SmtpTlsServer extends SmtpServer {
  /** smtp://127.0.0.1:<port>, no credentials (the test puts them in SMTP_URL). */
  url: string;
  /** Port, for URLs naming `localhost` (the certificate's name). */
  port: number;
  /** The test CA's certificate (PEM file): what SMTP_CA_FILE names. */
  caFile: string;
}

/**
 * Starts an SMTP server that offers STARTTLS and requires AUTH (over TLS only), with a
 * certificate for `localhost` / 127.0.0.1 issued by a CA that openssl makes in `dir`.
 * `smtp-server` runs under Node here: Deno's node:tls cannot upgrade an accepted socket to
 * TLS, which STARTTLS needs. Each delivered message says whether its session was TLS
 * (`secure`) and who authenticated (`user`). `await using` stops it.
 */
export async function startSmtpTls(options: SmtpTlsOptions): Promise<SmtpTlsServer> {
  const { dir } = options;
  const at = (name: string) => `${dir}/${name}`;
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await runOk([
    "openssl",
    "req",
    "-x509",
    ...ec,
    "-keyout",
    at("ca.key"),
    "-out",
    at("ca.pem"),
    "-days",
    "1",
    "-subj",
    "/CN=RootStream test CA",
  ]);
  await runOk([
    "openssl",
    "req",
    ...ec,
    "-keyout",
    at("smtp.key"),
    "-out",
    at("smtp.csr"),
    "-subj",
    "/CN=localhost",
  ]);
  await Deno.writeTextFile(
    at("smtp.ext"),
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n" +
      "extendedKeyUsage=serverAuth\n",
  );
  await runOk([
    "openssl",
    "x509",
    "-req",
    "-in",
    at("smtp.csr"),
    "-CA",
    at("ca.pem"),
    "-CAkey",
    at("ca.key"),
    "-CAcreateserial",
    "-out",
    at("smtp.pem"),
    "-days",
    "1",
    "-extfile",
    at("smtp.ext"),
  ]);

  const port = await freePort();
  const script = new URL("./smtp_tls_server.mjs", import.meta.url).pathname;
  const child = new Deno.Command("node", {
    args: [
      script,
      JSON.stringify({
        port,
        key: at("smtp.key"),
        cert: at("smtp.pem"),
        user: options.user,
        pass: options.pass,
      }),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const messages: DeliveredMail[] = [];
  let listening!: () => void;
  const ready = new Promise<void>((resolve) => listening = resolve);
  // Reads the server's lines until it exits.
  const reading = (async () => {
    let buffered = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = JSON.parse(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
        if (line.listening) listening();
        else messages.push(line as DeliveredMail);
      }
    }
  })();
  const exited = child.status.then((s) => {
    throw new HarnessError(
      "SERVER_START_FAILED",
      `The SMTP test server (node ${script}) exited with code ${s.code} before listening`,
    );
  });
  try {
    await Promise.race([ready, exited]);
  } catch (err) {
    await reading;
    throw err;
  }
  exited.catch(() => {});
  return {
    url: `smtp://127.0.0.1:${port}`,
    port,
    caFile: at("ca.pem"),
    messages,
    async [Symbol.asyncDispose]() {
      child.kill("SIGTERM");
      await child.status;
      await reading;
    },
  };
}
