// Plumbing shared by the interop scripts: input parsing, the connection options
// handed to BullMQ, a run-time bound, and the one-JSON-line output rule.

export const DEFAULT_TIMEOUT_MS = 20000;

// How long closing connections may take before the process exits anyway.
const CLOSE_BUDGET_MS = 3000;

// Extra time the hard deadline allows past `timeoutMs` for scripts that stop by
// themselves at `timeoutMs` (consume, events) and then still have to close.
const HARD_GRACE_MS = CLOSE_BUDGET_MS + 2000;

function fail(message) {
  process.stderr.write(`${message}\n`);
  process.exit(1);
}

function readInput() {
  const raw = process.argv[2];
  if (raw === undefined) {
    fail('usage: node <script>.mjs \'<json object>\'');
  }
  let input;
  try {
    input = JSON.parse(raw);
  } catch (err) {
    fail(`input is not valid JSON: ${err.message}`);
  }
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    fail('input must be a JSON object');
  }
  if (typeof input.url !== 'string' || input.url.length === 0) {
    fail('input.url (a redis:// URL) is required');
  }
  if (typeof input.queue !== 'string' || input.queue.length === 0) {
    fail('input.queue (the queue name) is required');
  }
  return input;
}

/** The `timeoutMs` of the input, or the default. */
export function timeoutOf(input) {
  const t = Number(input.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  return Number.isFinite(t) && t > 0 ? t : DEFAULT_TIMEOUT_MS;
}

/** Options common to every BullMQ class built from the input. */
export function baseOpts(input) {
  return {
    connection: { url: input.url },
    prefix: input.prefix ?? 'bull',
  };
}

/** Resolves after `ms`, without keeping the process alive. */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/**
 * Closes every BullMQ object in `closables` (anything with a `close()`), giving up
 * after a fixed budget so a stuck connection cannot keep the script alive.
 */
export async function closeAll(closables) {
  const closing = Promise.allSettled(
    closables.filter(Boolean).map((c) => Promise.resolve().then(() => c.close())),
  );
  await Promise.race([closing, sleep(CLOSE_BUDGET_MS)]);
}

/**
 * Runs `main(input, timeoutMs)` and prints its result as the last stdout line.
 *
 * `selfBounded` scripts stop on their own at `timeoutMs` and report it; they get
 * a grace period past it before the hard deadline. Other scripts fail at
 * `timeoutMs`. Either way the process exits: 0 after printing the result,
 * 1 with a message on stderr on any error or at the hard deadline.
 */
export function runScript(name, main, { selfBounded = false } = {}) {
  const input = readInput();
  const timeoutMs = timeoutOf(input);
  const hardMs = selfBounded ? timeoutMs + HARD_GRACE_MS : timeoutMs;
  const hard = setTimeout(() => {
    fail(`${name}: did not finish within ${hardMs} ms`);
  }, hardMs);
  hard.unref();

  Promise.resolve()
    .then(() => main(input, timeoutMs))
    .then(
      (result) => {
        const line = `${JSON.stringify(result)}\n`;
        process.stdout.write(line, () => process.exit(0));
      },
      (err) => {
        const detail = err && err.stack ? err.stack : String(err);
        fail(`${name}: ${detail}`);
      },
    );
}
