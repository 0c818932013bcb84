import postgres from "postgres";
import { startPostgres } from "./tests/harness/mod.ts";
const dir = "/tmp/tlsproto";
await new Deno.Command("chown", { args: ["postgres", `${dir}/localhost.key`] }).output();
await using pg = await startPostgres({ settings: { ssl: "on", ssl_cert_file: `${dir}/localhost.crt`, ssl_key_file: `${dir}/localhost.key` } });
const url = await pg.createDatabase();
console.log(url);
const u = new URL(url); u.hostname = "localhost";
const sql = postgres(u.toString(), { ssl: { ca: Deno.readTextFileSync(`${dir}/ca.crt`), rejectUnauthorized: true, servername: "localhost" }, max: 1 });
console.log(await sql`SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()`);
await sql.end();
// wrong CA must fail
const sql2 = postgres(u.toString(), { ssl: "verify-full", max: 1, connect_timeout: 5 });
try { console.log(await sql2`select 1`); } catch (e) { console.log("refused:", (e as Error).message); }
await sql2.end();
