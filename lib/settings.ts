/**
 * Reading a group of settings from environment variables, the same way for every concern: the
 * variables of the group that are set (an empty one counts as unset), validated by one zod
 * schema, and every bad one named in one sentence — `NAME must be <what it must be>, got
 * <value>` — with the values of secrets (and of URLs that carry credentials) never shown.
 * @module
 */
import type { z } from "zod";
import { RuntimeError } from "./errors.ts";

/** The variables `names` of `env` that are set to something. */
export function pickSettings(
  env: Record<string, string | undefined>,
  names: Iterable<string>,
): Record<string, string> {
  const raw: Record<string, string> = {};
  for (const name of names) {
    const v = env[name];
    if (v !== undefined && v !== "") raw[name] = v;
  }
  return raw;
}

/** Parts of a variable's name that mark its value as secret. */
const SECRET_NAME_PARTS = ["SECRET", "PASSWORD", "TOKEN", "_KEY"];

/** How a value is quoted in an error: secrets and URLs with credentials are not shown. */
export function shownValue(name: string, value: string | undefined): string {
  if (value === undefined) return "nothing";
  const upper = name.toUpperCase();
  if (SECRET_NAME_PARTS.some((part) => upper.includes(part))) return "<hidden>";
  if (value.includes("://") && value.includes("@")) {
    return "<hidden: it may hold a password>";
  }
  return JSON.stringify(value);
}

/** One sentence per zod issue, naming the variable (`label` may add its flag). */
function settingsProblems(
  error: z.ZodError,
  raw: Record<string, string | undefined>,
  label: (name: string) => string = (name) => name,
): string[] {
  return error.issues.map((issue) => {
    const name = String(issue.path[0] ?? "the settings");
    // A schema's message says what the value must be, with or without those words.
    const must = issue.message.replace(/^Invalid input: /, "").replace(/^must be /, "");
    return `${label(name)} must be ${must}, got ${shownValue(name, raw[name])}`;
  });
}

/** CONFIG_INVALID naming every problem (`details.problems` lists them). */
function invalidSettings(problems: string[]): RuntimeError {
  return new RuntimeError("CONFIG_INVALID", `Invalid configuration: ${problems.join("; ")}`, {
    details: { problems },
  });
}

/**
 * Validates `raw` with `schema`; throws {@linkcode invalidSettings} naming every bad variable
 * and every `extra` problem the caller found beside the schema.
 */
export function parseSettings<S extends z.ZodType>(
  schema: S,
  raw: Record<string, string | undefined>,
  options: { label?: (name: string) => string; extra?: string[] } = {},
): z.output<S> {
  const result = schema.safeParse(raw);
  const problems = [
    ...(result.success ? [] : settingsProblems(result.error, raw, options.label)),
    ...(options.extra ?? []),
  ];
  if (problems.length) throw invalidSettings(problems);
  return result.data as z.output<S>;
}
