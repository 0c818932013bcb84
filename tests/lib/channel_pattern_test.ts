/**
 * The subscription pattern matcher: the documented glob meaning (`*` any characters, dots
 * included; `?` exactly one), validation with a clear error, and a bound on the work any
 * pattern can cause — counted in steps, not timed.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  matchPattern,
  MAX_PATTERN_LENGTH,
  parseChannelPattern,
} from "../../lib/channel_pattern.ts";
import { RuntimeError } from "../../lib/errors.ts";

/** The glob meaning written out directly: exponential, so for small inputs only. */
function reference(pattern: string, channel: string): boolean {
  if (pattern === "") return channel === "";
  if (pattern[0] === "*") {
    return reference(pattern.slice(1), channel) ||
      (channel !== "" && reference(pattern, channel.slice(1)));
  }
  return channel !== "" && (pattern[0] === "?" || pattern[0] === channel[0]) &&
    reference(pattern.slice(1), channel.slice(1));
}

/** What the code did before: a regular expression built from the pattern. */
function formerRegex(pattern: string): RegExp {
  const body = pattern.replace(/[.+^${}()|[\]\\-]/g, "\\$&").replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${body}$`);
}

function matches(pattern: string, channel: string): boolean {
  return parseChannelPattern(pattern).matches(channel);
}

function refusal(pattern: string): string {
  try {
    parseChannelPattern(pattern);
  } catch (err) {
    assert.ok(err instanceof RuntimeError, String(err));
    assert.equal(err.code, "VALIDATION_FAILED");
    return err.message;
  }
  assert.fail(`${JSON.stringify(pattern)} was accepted`);
}

Deno.test("channel patterns", async (t) => {
  await t.step("* covers any characters, dots included, and ? exactly one", () => {
    const cases: [string, string, boolean][] = [
      ["*", "stream.changed", true],
      ["stream.*", "stream.changed", true],
      ["stream.*", "stream.", true],
      ["stream.*", "stream", false],
      ["stream.*", "streams.changed", false],
      ["*.changed", "user.changed", true],
      ["*.changed", "stream.started.changed", true],
      ["*.changed", "changed", false],
      ["stream.?tarted", "stream.started", true],
      ["stream.?tarted", "stream.tarted", false],
      ["stream.?tarted", "stream.sstarted", false],
      ["stream.started", "stream.started", true],
      ["stream.started", "stream.startedx", false],
      ["s*m.*d", "stream.changed", true],
      ["s*m.*d", "stream.changes", false],
      ["**", "", true],
      ["?", "", false],
      ["*?*", "a", true],
      ["a*a*a", "aaaa", true],
      ["a*a*a", "aa", false],
      // A dot in a pattern is a dot, not "any character" as in a regex.
      ["stream.changed", "streamxchanged", false],
      // `-` is a literal character too (it was escaped for the regex).
      ["game-1.*", "game-1.score", true],
    ];
    for (const [pattern, channel, expected] of cases) {
      assert.equal(matches(pattern, channel), expected, `${pattern} against ${channel}`);
    }
  });

  await t.step("agrees with the definition and the former regex on small inputs", () => {
    const patternArb = fc.array(fc.constantFrom("a", "b", ".", "*", "?"), {
      minLength: 1,
      maxLength: 9,
    }).map((cs) => cs.join(""));
    const channelArb = fc.array(fc.constantFrom("a", "b", "."), { maxLength: 10 })
      .map((cs) => cs.join(""));
    fc.assert(
      fc.property(patternArb, channelArb, (pattern, channel) => {
        const got = matches(pattern, channel);
        assert.equal(got, reference(pattern, channel), `${pattern} against ${channel}`);
        assert.equal(got, formerRegex(pattern).test(channel), `${pattern} against ${channel}`);
      }),
      { numRuns: 3000 },
    );
  });

  await t.step("any pattern takes at most (pattern + 1) × (channel + 1) steps", () => {
    const adversarial = [
      "*".repeat(MAX_PATTERN_LENGTH - 1) + "z",
      "*".repeat(MAX_PATTERN_LENGTH - 8) + ".changed",
      "*a".repeat(MAX_PATTERN_LENGTH / 2 - 1) + "*b",
      "*?".repeat(MAX_PATTERN_LENGTH / 2),
      "a*".repeat(MAX_PATTERN_LENGTH / 2),
      "*" + "a".repeat(MAX_PATTERN_LENGTH - 2) + "b",
      // The two-pointer walk's own worst case: half the channel to try, half to match.
      "*" + "a".repeat(63) + "b",
      "?".repeat(MAX_PATTERN_LENGTH),
    ];
    const channels = [
      "a".repeat(128),
      "a".repeat(127) + "b",
      "stream.changed",
      "a.".repeat(64),
      "",
    ];
    let worst = 0;
    for (const pattern of adversarial) {
      assert.equal(pattern.length <= MAX_PATTERN_LENGTH, true, pattern);
      parseChannelPattern(pattern);
      for (const channel of channels) {
        const { matched, steps } = matchPattern(pattern, channel);
        const bound = (pattern.length + 1) * (channel.length + 1);
        assert.ok(steps <= bound, `${pattern} against ${channel}: ${steps} > ${bound} steps`);
        assert.equal(matched, dpReference(pattern, channel), `${pattern} against ${channel}`);
        worst = Math.max(worst, steps);
      }
    }
    // The two-pointer walk really is exercised: the worst case goes back to a star often.
    assert.ok(worst > 1000, `worst case took ${worst} steps`);

    fc.assert(
      fc.property(
        fc.string({ unit: fc.constantFrom("a", "b", "*", "?"), minLength: 1, maxLength: 128 }),
        fc.string({ unit: fc.constantFrom("a", "b"), maxLength: 128 }),
        (pattern, channel) => {
          const { steps } = matchPattern(pattern, channel);
          return steps <= (pattern.length + 1) * (channel.length + 1);
        },
      ),
      { numRuns: 500 },
    );
  });

  await t.step("a pattern is refused with a reason", () => {
    assert.match(refusal(""), /it is empty/);
    assert.match(
      refusal("a".repeat(MAX_PATTERN_LENGTH + 1)),
      new RegExp(`${MAX_PATTERN_LENGTH + 1} characters long; .* at most ${MAX_PATTERN_LENGTH}`),
    );
    // The refusal does not echo an over-long pattern back.
    assert.ok(refusal("x".repeat(10_000)).length < 200);
    assert.match(refusal("Stream.*"), /character "S" at position 0 is not allowed/);
    assert.match(refusal("stream.(a|b)"), /character "\(" at position 7/);
    assert.match(refusal("stream.[ab]"), /character "\[" at position 7/);
    assert.match(refusal("stream.\n"), /character "\\n" at position 7/);
    assert.match(refusal("stream.é"), /character "é" at position 7/);
    assert.equal(parseChannelPattern("a".repeat(MAX_PATTERN_LENGTH)).source.length, 128);
  });
});

/** The definition again, as a table (polynomial), for inputs too long for `reference`. */
function dpReference(pattern: string, channel: string): boolean {
  const m = pattern.length, n = channel.length;
  // ok[i][j]: pattern from i matches channel from j.
  let next = new Array<boolean>(n + 1).fill(false);
  next[n] = true;
  for (let i = m - 1; i >= 0; i--) {
    const cur = new Array<boolean>(n + 1).fill(false);
    for (let j = n; j >= 0; j--) {
      if (pattern[i] === "*") cur[j] = next[j] || (j < n && cur[j + 1]);
      else cur[j] = j < n && (pattern[i] === "?" || pattern[i] === channel[j]) && next[j + 1];
    }
    next = cur;
  }
  return next[0];
}
