/**
 * Subscription patterns over channel names (`stream.*`, `user.?hanged`): `*` stands for
 * any run of characters, dots included, possibly empty; `?` for exactly one character;
 * every other character for itself.
 *
 * A pattern is client input (`GET /state/stream?pattern=` is open to anyone), so it is
 * never turned into a regular expression: a backtracking regex needs time exponential in
 * the number of stars (`*****…z` froze an instance). The matcher here walks pattern and
 * channel once, going back only to the most recent star, which bounds it by
 * (pattern length + 1) × (channel length + 1) steps; patterns are at most
 * {@linkcode MAX_PATTERN_LENGTH} characters and are checked before anything uses them.
 * @module
 */
import { RuntimeError } from "./errors.ts";

/** Longest subscription pattern accepted, in characters. */
export const MAX_PATTERN_LENGTH = 128;

/** A validated subscription pattern. */
export interface ChannelPattern {
  /** The pattern as given. */
  readonly source: string;
  /** True when `channel` matches the whole pattern. */
  matches(channel: string): boolean;
}

const STAR = 42; // "*"
const ANY = 63; // "?"

/** Lower-case letters, digits, `_ . -` (what channel names are made of) and the globs. */
function allowed(code: number): boolean {
  return (code >= 97 && code <= 122) || (code >= 48 && code <= 57) || code === 95 ||
    code === 46 || code === 45 || code === STAR || code === ANY;
}

/**
 * Checks a pattern given by a client and returns its matcher; throws VALIDATION_FAILED
 * saying what is wrong (the pattern itself is echoed only when it is short enough).
 */
export function parseChannelPattern(pattern: string): ChannelPattern {
  const rule = "use lower-case letters, digits, _ . - and the globs * (any characters) " +
    "and ? (one character)";
  if (pattern.length === 0) {
    throw new RuntimeError("VALIDATION_FAILED", `Invalid pattern: it is empty; ${rule}`);
  }
  if (pattern.length > MAX_PATTERN_LENGTH) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Invalid pattern: ${pattern.length} characters long; patterns are at most ${MAX_PATTERN_LENGTH} characters`,
    );
  }
  for (let i = 0; i < pattern.length; i++) {
    if (!allowed(pattern.charCodeAt(i))) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Invalid pattern ${JSON.stringify(pattern)}: character ${
          JSON.stringify(pattern[i])
        } at position ${i} is not allowed; ${rule}`,
      );
    }
  }
  // A run of stars means what one star means; one is less work for the matcher.
  let compact = "";
  for (let i = 0; i < pattern.length; i++) {
    if (pattern.charCodeAt(i) !== STAR || compact.charCodeAt(compact.length - 1) !== STAR) {
      compact += pattern[i];
    }
  }
  return { source: pattern, matches: (channel) => matchPattern(compact, channel).matched };
}

/**
 * Matches `channel` against a pattern already checked by {@linkcode parseChannelPattern}
 * and says how many steps that took (each step moves one position in the channel or the
 * pattern), so tests can hold the matcher to its bound.
 */
export function matchPattern(
  pattern: string,
  channel: string,
): { matched: boolean; steps: number } {
  let p = 0; // position in the pattern
  let c = 0; // position in the channel
  let star = -1; // position of the most recent star, -1 before the first
  let resume = 0; // channel position the most recent star's run ends at so far
  let steps = 0;
  while (c < channel.length) {
    steps++;
    const code = p < pattern.length ? pattern.charCodeAt(p) : -1;
    if (code === STAR) {
      // Let the star cover nothing for now; widen it by one if what follows fails.
      star = p++;
      resume = c;
    } else if (code !== -1 && (code === ANY || code === channel.charCodeAt(c))) {
      p++;
      c++;
    } else if (star >= 0) {
      // Only the most recent star is ever widened: an earlier star covering more could
      // only place the text after it later, which the recent star can cover just as well.
      p = star + 1;
      c = ++resume;
    } else {
      return { matched: false, steps };
    }
  }
  while (p < pattern.length && pattern.charCodeAt(p) === STAR) {
    p++;
    steps++;
  }
  return { matched: p === pattern.length, steps };
}
