// consume.mjs: processes jobs with a BullMQ Worker until `expect` distinct jobs have
// reached a final state (completed, or failed with no retry left) or `timeoutMs` passes.
//
// input:  {url, prefix?, queue, expect: N, concurrency?: 1, timeoutMs?: 20000,
//          failPlan?: {"<job name>": k}, returnValue?: any,
//          stalledInterval?, lockDuration?, workerOpts?: {...}}
//   failPlan: a job with that name throws Error("planned failure <n>") while fewer
//             than k of its attempts have failed; n = attemptsMade + 1.
//   returnValue: what each successful call returns (default {ok: true, id}).
//   workerOpts: any further WorkerOptions, applied last.
//   expect: 0 runs the worker for the whole timeoutMs and reports timedOut: false.
// output: {processed: [{id, name, data, opts, attemptsMade, attemptsStarted,
//                       processedOn, timestamp, delay, priority, at}],  (call start order)
//          completed: ["<id>", ...],             (completion order)
//          failed: [{id, failedReason}, ...],    (final failures only, in order)
//          timedOut: bool}
import { Worker } from 'bullmq';

import { baseOpts, closeAll, runScript } from './common.mjs';

runScript(
  'consume',
  async (input, timeoutMs) => {
    const expect = Number(input.expect ?? 0);
    if (!Number.isInteger(expect) || expect < 0) {
      throw new Error('input.expect must be a non-negative integer');
    }
    const failPlan = input.failPlan ?? {};
    const hasReturnValue = Object.prototype.hasOwnProperty.call(input, 'returnValue');

    const processed = [];
    const completed = [];
    const failed = [];
    const finals = new Set();

    let finish;
    const done = new Promise((resolve) => {
      finish = resolve;
    });
    const noteFinal = (id) => {
      finals.add(id);
      if (expect > 0 && finals.size >= expect) {
        finish(false);
      }
    };

    const processor = async (job) => {
      processed.push({
        id: String(job.id),
        name: job.name,
        data: job.data,
        opts: job.opts,
        attemptsMade: job.attemptsMade,
        attemptsStarted: job.attemptsStarted,
        processedOn: job.processedOn ?? null,
        timestamp: job.timestamp,
        delay: job.delay,
        priority: job.priority,
        at: Date.now(),
      });
      const planned = Number(failPlan[job.name] ?? 0);
      if (job.attemptsMade < planned) {
        throw new Error(`planned failure ${job.attemptsMade + 1}`);
      }
      return hasReturnValue ? input.returnValue : { ok: true, id: String(job.id) };
    };

    const opts = { ...baseOpts(input), concurrency: input.concurrency ?? 1 };
    if (input.stalledInterval !== undefined) opts.stalledInterval = input.stalledInterval;
    if (input.lockDuration !== undefined) opts.lockDuration = input.lockDuration;
    Object.assign(opts, input.workerOpts ?? {});

    const worker = new Worker(input.queue, processor, opts);
    worker.on('error', (err) => process.stderr.write(`worker error: ${err.message}\n`));
    worker.on('completed', (job) => {
      const id = String(job.id);
      if (!finals.has(id)) {
        completed.push(id);
        noteFinal(id);
      }
    });
    worker.on('failed', (job, err) => {
      if (!job) {
        process.stderr.write(`worker failure outside a job: ${err && err.message}\n`);
        return;
      }
      const id = String(job.id);
      if (finals.has(id)) return;
      // The event fires after the failure was recorded, so attemptsMade already
      // counts it. A job that was moved to failed also has finishedOn set (this
      // covers unrecoverable errors and maxStartedAttempts).
      const allowed = job.opts.attempts || 1;
      if (job.attemptsMade >= allowed || job.finishedOn) {
        failed.push({ id, failedReason: job.failedReason ?? (err && err.message) ?? '' });
        noteFinal(id);
      }
    });

    const timer = setTimeout(() => finish(expect > 0), timeoutMs);
    timer.unref();
    const timedOut = await done;
    clearTimeout(timer);

    await closeAll([worker]);
    return { processed, completed, failed, timedOut };
  },
  { selfBounded: true },
);
