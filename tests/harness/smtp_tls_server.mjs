// The harness's SMTP server with STARTTLS and AUTH, run by Node (tests/harness/smtp.ts):
// Deno's node:tls cannot upgrade an accepted socket to TLS, which smtp-server's STARTTLS
// does. The same smtp-server package (node_modules); one JSON line on stdout when it
// listens, then one per delivered message. Configuration: one JSON argument
// {port, key, cert, user, pass} (key and cert: PEM file paths). Ends on SIGTERM (the default action).
import { Buffer } from "node:buffer";
import { readFileSync } from "node:fs";
import process from "node:process";
import { SMTPServer } from "smtp-server";

const config = JSON.parse(process.argv[2]);
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const server = new SMTPServer({
  key: readFileSync(config.key),
  cert: readFileSync(config.cert),
  // AUTH is required, and only taken over TLS (smtp-server's default: no allowInsecureAuth).
  authOptional: false,
  authMethods: ["PLAIN", "LOGIN"],
  logger: false,
  onAuth(auth, _session, callback) {
    if (auth.username === config.user && auth.password === config.pass) {
      callback(null, { user: auth.username });
    } else {
      callback(new Error("Invalid username or password"));
    }
  },
  onData(stream, session, callback) {
    const chunks = [];
    stream.on("data", (c) => chunks.push(c));
    stream.on("end", () => {
      const from = session.envelope.mailFrom;
      print({
        from: from ? from.address : null,
        to: session.envelope.rcptTo.map((r) => r.address),
        raw: Buffer.concat(chunks).toString("utf8"),
        secure: session.secure === true,
        user: session.user ?? null,
      });
      callback();
    });
  },
});
server.on("error", (err) => process.stderr.write(`smtp server: ${err.message}\n`));
server.listen(config.port, "127.0.0.1", () => print({ listening: config.port }));
