// hang.mjs: a BullMQ Worker whose processor never finishes. It takes jobs, keeps their
// locks renewed for as long as the process lives, and never completes or fails them, so a
// test can kill the process (SIGKILL) while it holds a job and check that another worker
// recovers the job through the shared stall check.
//
// input:  {url, prefix?, queue, concurrency?: 1, timeoutMs?: 20000,
//          lockDuration?, stalledInterval?, workerOpts?: {...}}
//   workerOpts: any further WorkerOptions, applied last.
// output (only when it is not killed first, at timeoutMs):
//         {started: [{id, name, attemptsStarted, at}], timedOut: true}
//   started: one record per processor call, in start order (`at`: Node clock, ms).
import { Worker } from 'bullmq';

import { baseOpts, closeAll, runScript } from './common.mjs';

runScript(
  'hang',
  async (input, timeoutMs) => {
    const started = [];
    // Never settles; released only by the process exiting.
    const forever = new Promise(() => {});

    const processor = async (job) => {
      started.push({
        id: String(job.id),
        name: job.name,
        attemptsStarted: job.attemptsStarted,
        at: Date.now(),
      });
      return forever;
    };

    const opts = { ...baseOpts(input), concurrency: input.concurrency ?? 1 };
    if (input.stalledInterval !== undefined) opts.stalledInterval = input.stalledInterval;
    if (input.lockDuration !== undefined) opts.lockDuration = input.lockDuration;
    Object.assign(opts, input.workerOpts ?? {});

    const worker = new Worker(input.queue, processor, opts);
    worker.on('error', (err) => process.stderr.write(`worker error: ${err.message}\n`));

    await new Promise((resolve) => {
      setTimeout(resolve, timeoutMs);
    });
    // Closing waits for running jobs, which never end: closeAll gives up after its budget.
    await closeAll([worker]);
    return { started, timedOut: true };
  },
  { selfBounded: true },
);
