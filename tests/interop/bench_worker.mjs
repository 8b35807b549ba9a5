// bench_worker.mjs: one BullMQ Worker with a no-op processor, for `cargo xtask bench`.
// It runs until `n` jobs have completed, then closes and reports.
//
// input:  {url, prefix?, queue, concurrency: c, n, timeoutMs?}
//         (other fields, such as `prefilled`, are for the Rust peer and ignored here)
// output: {elapsedMs, n, rssPeakKb, cpuMs}
//
// The processor returns null at once. The clock starts just before the Worker is created
// and stops at the n-th `completed` event, which the Worker emits once that completion is
// stored in Redis. `cpuMs` is the CPU time (user + system, all threads) this process used
// over the same span. `rssPeakKb` is the peak resident set size of the whole process
// (`process.resourceUsage().maxRSS`, in KB), read after closing. A failed job or a run
// longer than `timeoutMs` fails the script.
import { Worker } from 'bullmq';

import { baseOpts, closeAll, runScript } from './common.mjs';

function positiveInt(value, field) {
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`input.${field} must be a positive integer, got ${JSON.stringify(value)}`);
  }
  return value;
}

runScript('bench_worker', async (input) => {
  const n = positiveInt(input.n, 'n');
  const concurrency = positiveInt(input.concurrency ?? 1, 'concurrency');

  let completed = 0;
  let finish;
  let abort;
  const done = new Promise((resolve, reject) => {
    finish = resolve;
    abort = reject;
  });

  const cpuStart = process.cpuUsage();
  const started = process.hrtime.bigint();
  const worker = new Worker(input.queue, async () => null, { ...baseOpts(input), concurrency });
  worker.on('error', (err) => process.stderr.write(`worker error: ${err.message}\n`));
  worker.on('failed', (job, err) => {
    abort(new Error(`job ${job ? job.id : '?'} failed: ${err ? err.message : '?'}`));
  });
  worker.on('completed', () => {
    completed += 1;
    if (completed === n) {
      const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
      const cpu = process.cpuUsage(cpuStart);
      finish({ elapsedMs, cpuMs: (cpu.user + cpu.system) / 1e3 });
    }
  });

  let result;
  try {
    result = await done;
  } finally {
    await closeAll([worker]);
  }
  return { elapsedMs: result.elapsedMs, n, rssPeakKb: process.resourceUsage().maxRSS, cpuMs: result.cpuMs };
});
