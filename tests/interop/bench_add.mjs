// bench_add.mjs: times adds through one BullMQ Queue (one ioredis connection), for
// `cargo xtask bench`.
//
// input:  {url, prefix?, queue, workload: "sequential" | "concurrent" | "bulk", n,
//          concurrency?: 64, batch?: 1000, opts?: {}, warmup?: 0, timeoutMs?}
// output: {elapsedMs, cpuMs, n}
//
// Every job is named "bench" with data {"user": 12345, "email": "user@example.com", "n": i}
// and the job options `opts`.
//   sequential: one add at a time, each awaited before the next.
//   concurrent: `concurrency` adds in flight at all times until `n` were sent.
//   bulk:       addBulk calls of `batch` jobs (the last one may be smaller).
// `warmup` jobs are first added the same way to the same queue, untimed, so that the
// timed part runs warm (script cached on the server, JIT-compiled code in Node). Only the
// `n` timed adds count in `elapsedMs`; opening the connection is not timed. `cpuMs` is the
// CPU time (user + system, all threads) this process used during the timed adds.
import { Queue } from 'bullmq';

import { baseOpts, closeAll, runScript } from './common.mjs';

const JOB_NAME = 'bench';

function dataFor(i) {
  return { user: 12345, email: 'user@example.com', n: i };
}

function positiveInt(value, field, fallback) {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < 0) {
    throw new Error(`input.${field} must be a non-negative integer, got ${JSON.stringify(value)}`);
  }
  return v;
}

async function sequential(queue, first, count, opts) {
  for (let i = first; i < first + count; i += 1) {
    await queue.add(JOB_NAME, dataFor(i), opts);
  }
}

async function concurrent(queue, first, count, opts, inFlight) {
  // `inFlight` lanes, each taking the next index until all `count` are taken.
  let next = first;
  const end = first + count;
  const lane = async () => {
    while (next < end) {
      const i = next;
      next += 1;
      await queue.add(JOB_NAME, dataFor(i), opts);
    }
  };
  const lanes = [];
  for (let k = 0; k < Math.min(inFlight, count); k += 1) {
    lanes.push(lane());
  }
  await Promise.all(lanes);
}

async function bulk(queue, first, count, opts, batch) {
  const end = first + count;
  for (let start = first; start < end; start += batch) {
    const stop = Math.min(start + batch, end);
    const jobs = [];
    for (let i = start; i < stop; i += 1) {
      jobs.push({ name: JOB_NAME, data: dataFor(i), opts });
    }
    await queue.addBulk(jobs);
  }
}

runScript('bench_add', async (input) => {
  const n = positiveInt(input.n, 'n', undefined);
  const warmup = positiveInt(input.warmup, 'warmup', 0);
  const inFlight = positiveInt(input.concurrency, 'concurrency', 64);
  const batch = positiveInt(input.batch, 'batch', 1000);
  if (inFlight === 0 || batch === 0) {
    throw new Error('input.concurrency and input.batch must be at least 1');
  }
  const opts = input.opts ?? {};

  let run;
  switch (input.workload) {
    case 'sequential':
      run = (queue, first, count) => sequential(queue, first, count, opts);
      break;
    case 'concurrent':
      run = (queue, first, count) => concurrent(queue, first, count, opts, inFlight);
      break;
    case 'bulk':
      run = (queue, first, count) => bulk(queue, first, count, opts, batch);
      break;
    default:
      throw new Error(
        `input.workload must be "sequential", "concurrent" or "bulk", got ${JSON.stringify(input.workload)}`,
      );
  }

  const queue = new Queue(input.queue, baseOpts(input));
  queue.on('error', (err) => process.stderr.write(`queue error: ${err.message}\n`));
  try {
    await queue.waitUntilReady();
    if (warmup > 0) {
      await run(queue, n, warmup);
    }
    const cpuStart = process.cpuUsage();
    const started = process.hrtime.bigint();
    await run(queue, 0, n);
    const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
    const cpu = process.cpuUsage(cpuStart);
    return { elapsedMs, cpuMs: (cpu.user + cpu.system) / 1e3, n };
  } finally {
    await closeAll([queue]);
  }
});
