/**
 * Shared types of the storage layer.
 * @module
 */
import type postgres from "postgres";

/** The postgres.js query function every data-access module takes as its first argument. */
// deno-lint-ignore ban-types
export type Sql = postgres.Sql<{}>;

/** A transaction-scoped query function (inside `sql.begin`). */
// deno-lint-ignore ban-types
export type TxSql = postgres.TransactionSql<{}>;
