/**
 * Input validation shared by the data-access modules: one way to turn a zod failure into
 * VALIDATION_FAILED naming the field, and the schemas every module needs.
 * @module
 */
import { z } from "zod";
import { RuntimeError } from "../lib/errors.ts";

/** A database id: a positive safe integer. */
export const idSchema = z
  .number({ error: "must be a number" })
  .int("must be an integer")
  .positive("must be positive")
  .max(Number.MAX_SAFE_INTEGER, "is too large");

/** A non-negative count that fits an INTEGER column. */
export const countSchema = z
  .number({ error: "must be a number" })
  .int("must be an integer")
  .min(0, "must not be negative")
  .max(2_147_483_647, "is too large");

/**
 * Parses `input` or throws VALIDATION_FAILED naming the first offending field
 * ("Cannot create user: email must be an email address"). `name` labels the input
 * itself; nested fields are named by their path.
 */
export function parseInput<T>(
  schema: z.ZodType<T>,
  input: unknown,
  options: { action: string; name: string; prefixPath?: boolean },
): T {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const field = options.prefixPath
    ? [options.name, ...issue.path].join(".")
    : issue.path.length
    ? issue.path.join(".")
    : options.name;
  throw new RuntimeError(
    "VALIDATION_FAILED",
    `Cannot ${options.action}: ${field} ${issue.message}`,
    { details: { field } },
  );
}
