// dashboard.mjs: serves bull-board, the web dashboard BullMQ users run, for some
// queues, so a person (or dashboard_check.mjs) can look at what bullpen wrote.
//
// input:  {url, prefix?, queues: ["<name>", ...], port?: 0, readOnly?: true,
//          watchStdin?: false, timeoutMs?}
// output: {url: "http://127.0.0.1:PORT/"}, printed once the server listens.
//
// Unlike the other scripts this one keeps running after its line: it serves until
// SIGTERM or SIGINT (then closes and exits 0) or, with `watchStdin: true`, until
// its stdin closes (so it does not outlive a parent that was killed). `timeoutMs`
// bounds the start-up only (Redis reachable, server listening). It listens on
// 127.0.0.1 alone; `port: 0` picks a free port.
import express from 'express';
import { Queue } from 'bullmq';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';

import { baseOpts, closeAll, timeoutOf } from './common.mjs';

function fail(message) {
  process.stderr.write(`dashboard: ${message}\n`);
  process.exit(1);
}

function readInput() {
  const raw = process.argv[2];
  if (raw === undefined) {
    fail('usage: node dashboard.mjs \'{"url": "redis://127.0.0.1:6379", "queues": ["q"]}\'');
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
  const names = input.queues;
  if (!Array.isArray(names) || names.length === 0
    || !names.every((n) => typeof n === 'string' && n.length > 0)) {
    fail('input.queues must be a non-empty array of queue names');
  }
  const port = Number(input.port ?? 0);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    fail('input.port must be an integer from 0 to 65535');
  }
  return { ...input, port };
}

function withTimeout(promise, ms, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

async function main() {
  const input = readInput();
  const startupMs = timeoutOf(input);
  const readOnly = input.readOnly ?? true;

  // skipMetasUpdate: showing a queue must not write its meta key.
  const queues = input.queues.map((name) => {
    const q = new Queue(name, { ...baseOpts(input), skipMetasUpdate: true });
    q.on('error', (err) => process.stderr.write(`dashboard: queue ${name}: ${err.message}\n`));
    return q;
  });

  let server;
  let closing = false;
  const shutdown = async (code) => {
    if (closing) return;
    closing = true;
    if (server) {
      server.close();
      server.closeAllConnections();
    }
    await closeAll(queues);
    process.exit(code);
  };
  process.on('SIGTERM', () => shutdown(0));
  process.on('SIGINT', () => shutdown(0));
  if (input.watchStdin) {
    process.stdin.on('end', () => shutdown(0));
    process.stdin.on('error', () => shutdown(0));
    process.stdin.resume();
  }

  // Fail at the first connection error before the queues are ready, rather than
  // waiting out ioredis's reconnect attempts.
  const firstError = new Promise((_, reject) => {
    for (const q of queues) q.once('error', reject);
  });
  try {
    await withTimeout(
      Promise.race([Promise.all(queues.map((q) => q.waitUntilReady())), firstError]),
      startupMs,
      'redis',
    );
  } catch (err) {
    process.stderr.write(`dashboard: cannot reach ${input.url}: ${err.message}\n`);
    await shutdown(1);
    return;
  }

  const board = new ExpressAdapter();
  board.setBasePath('/');
  createBullBoard({
    queues: queues.map((q) => new BullMQAdapter(q, { readOnlyMode: readOnly })),
    serverAdapter: board,
    options: { uiConfig: { boardTitle: 'bullpen' } },
  });

  const app = express();
  app.use('/', board.getRouter());

  server = app.listen(input.port, '127.0.0.1');
  try {
    await withTimeout(new Promise((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', reject);
    }), startupMs, 'listen');
  } catch (err) {
    process.stderr.write(`dashboard: cannot listen on 127.0.0.1:${input.port}: ${err.message}\n`);
    await shutdown(1);
    return;
  }
  const { port } = server.address();
  process.stdout.write(`${JSON.stringify({ url: `http://127.0.0.1:${port}/` })}\n`);
}

main().catch((err) => fail(err && err.stack ? err.stack : String(err)));
