// dashboard_check.mjs: looks at a bull-board page (dashboard.mjs) in headless
// Chromium, the way a person would, and reports what it shows for one queue.
//
// input:  {dashboardUrl, queue, jobId, expectReturnValue, screenshot?,
//          chromium?: "/usr/bin/chromium", timeoutMs?: 60000}
// output: {ok: true, sawQueue: true, completedCount: n, counts: {<status>: n},
//          sawReturnValue: true, returnValueText: "..."}
//
// Steps: open `dashboardUrl`; find a link named exactly `queue` (a); follow it and
// read the count badge of every status tab on the queue's page (b); open the
// COMPLETED tab, find job `#jobId` there and read the `returnValue` entry of its
// data view, which must equal `expectReturnValue` (c). The page is saved to
// `screenshot` (a PNG path) at the end, also when a step failed. Any missing piece
// exits 1 with what was missing on stderr.
//
// Only requests to 127.0.0.1 leave the browser: bull-board's page links a web font
// on fonts.googleapis.com, which is refused here.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

const DEFAULT_TIMEOUT_MS = 60000;
const STEP_TIMEOUT_MS = 15000;

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
];

function fail(message) {
  process.stderr.write(`dashboard_check: ${message}\n`);
  process.exit(1);
}

function readInput() {
  const raw = process.argv[2];
  if (raw === undefined) {
    fail('usage: node dashboard_check.mjs \'{"dashboardUrl": "...", "queue": "q", "jobId": "1", "expectReturnValue": ...}\'');
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
  for (const field of ['dashboardUrl', 'queue']) {
    if (typeof input[field] !== 'string' || input[field].length === 0) {
      fail(`input.${field} (a string) is required`);
    }
  }
  if (input.jobId === undefined || input.jobId === null || String(input.jobId) === '') {
    fail('input.jobId is required');
  }
  if (!('expectReturnValue' in input)) {
    fail('input.expectReturnValue is required (any JSON value)');
  }
  return input;
}

/**
 * The text bull-board's JSON view shows for `value`, as one line: keys unquoted and
 * followed by `:`, strings quoted, `,` between entries, no spaces. With `sortKeys`
 * object keys come in sorted order (the view sorts them).
 */
function viewText(value, sortKeys) {
  if (Array.isArray(value)) {
    return `[${value.map((v) => viewText(v, sortKeys)).join(',')}]`;
  }
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value);
    if (sortKeys) keys.sort();
    return `{${keys.map((k) => `${k}:${viewText(value[k], sortKeys)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * Joins the lines of the view's rendered text (one line per entry) into one, and
 * collapses runs of spaces as HTML does, so it compares with `viewText`.
 */
const oneLine = (text) => text.split('\n').map((l) => l.trim()).join('').replace(/ +/g, ' ');

/** `{<status>: n}` from the status tabs of a queue page; a tab with no badge is 0. */
async function readCounts(page) {
  const tabs = page.locator('a[href*="status="]');
  await tabs.first().waitFor({ timeout: STEP_TIMEOUT_MS });
  const counts = {};
  for (const tab of await tabs.all()) {
    const href = await tab.getAttribute('href');
    const status = new URL(href, 'http://x/').searchParams.get('status');
    const text = (await tab.innerText()).trim();
    const number = text.match(/(\d+)\s*$/);
    counts[status] = number ? Number(number[1]) : 0;
  }
  return counts;
}

/** The text of the `returnValue:` entry in `card`'s JSON view, or null. */
function returnValueEntry(card) {
  return card.evaluate((el) => {
    for (const item of el.querySelectorAll('[role="treeitem"]')) {
      const label = [...item.children].find((c) => c.tagName === 'SPAN'
        && c.textContent.trim() === 'returnValue:');
      if (label) return item.innerText;
    }
    return null;
  });
}

async function check(input, page, result) {
  const { queue } = input;
  const jobId = String(input.jobId);

  // (a) the queue is listed on the start page.
  await page.goto(input.dashboardUrl, { waitUntil: 'domcontentloaded' });
  const queueLink = page.getByRole('link', { name: queue, exact: true }).first();
  try {
    await queueLink.waitFor({ timeout: STEP_TIMEOUT_MS });
  } catch {
    throw new Error(`no link named "${queue}" on ${input.dashboardUrl}`);
  }
  result.sawQueue = true;

  // (b) the counts on the queue's own page.
  await queueLink.click();
  await page.waitForURL((u) => u.pathname.endsWith(`/queue/${encodeURIComponent(queue)}`), {
    timeout: STEP_TIMEOUT_MS,
  });
  result.counts = await readCounts(page);
  if (!('completed' in result.counts)) {
    throw new Error(`the page of queue "${queue}" has no COMPLETED tab`);
  }
  result.completedCount = result.counts.completed;

  // (c) the job in the completed list, with its return value.
  await page.locator('a[href*="status=completed"]').first().click();
  await page.waitForURL((u) => u.searchParams.get('status') === 'completed', {
    timeout: STEP_TIMEOUT_MS,
  });
  const jobLink = page.locator('a', { hasText: new RegExp(`^\\s*#${jobId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(\\D|$)`) });
  try {
    await jobLink.first().waitFor({ timeout: STEP_TIMEOUT_MS });
  } catch {
    throw new Error(`job #${jobId} is not in the completed list of "${queue}"`);
  }
  // The job's card: the innermost element holding both its link and a JSON view.
  const card = page.locator('div')
    .filter({ has: jobLink })
    .filter({ has: page.locator('[role="tree"]') })
    .last();
  try {
    await card.waitFor({ timeout: STEP_TIMEOUT_MS });
  } catch {
    // A collapsed card: open it.
    await jobLink.first().locator('xpath=../..').click();
    await card.waitFor({ timeout: STEP_TIMEOUT_MS });
  }
  const entry = await returnValueEntry(card);
  if (entry === null) {
    throw new Error(`job #${jobId}'s card shows no returnValue entry`);
  }
  result.returnValueText = entry.trim();
  const shown = oneLine(entry).replace(/^returnValue:/, '').replace(/,$/, '');
  const expected = input.expectReturnValue;
  const wanted = [viewText(expected, true), viewText(expected, false)].map(oneLine);
  if (!wanted.includes(shown)) {
    throw new Error(`job #${jobId} shows returnValue ${shown}, expected ${wanted[0]}`);
  }
  result.sawReturnValue = true;
}

async function main() {
  const input = readInput();
  const timeoutMs = Number(input.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  setTimeout(() => fail(`did not finish within ${timeoutMs} ms`), timeoutMs).unref();

  const profile = mkdtempSync(join(tmpdir(), 'bullpen-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: input.chromium ?? '/usr/bin/chromium',
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 720 },
    });
  } catch (err) {
    rmSync(profile, { recursive: true, force: true });
    fail(`cannot start Chromium: ${err.message}`);
  }
  await context.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === '127.0.0.1' ? route.continue() : route.abort('blockedbyclient');
  });
  const page = context.pages()[0] ?? await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));

  const result = { ok: false, sawQueue: false, completedCount: null, sawReturnValue: false };
  let failure = null;
  try {
    await check(input, page, result);
    result.ok = true;
  } catch (err) {
    failure = err.message;
  }
  if (input.screenshot) {
    try {
      await page.screenshot({ path: input.screenshot, fullPage: true });
      result.screenshot = input.screenshot;
    } catch (err) {
      failure ??= `cannot save the screenshot: ${err.message}`;
    }
  }
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  if (failure !== null) {
    const errors = pageErrors.length ? `; page errors: ${pageErrors.join(' | ')}` : '';
    fail(`${failure} (so far: ${JSON.stringify(result)})${errors}`);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

main().catch((err) => fail(err && err.stack ? err.stack : String(err)));
