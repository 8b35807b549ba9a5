// inspect.mjs: reads a queue's state through BullMQ's Queue getters.
//
// input:  {url, prefix?, queue, ids?: [..], states?: [..], start?: 0, end?: -1,
//          asc?: false, priorities?: [..], timeoutMs?}
// output: {counts: {<state>: n}, isPaused: bool, meta: {...},
//          jobs: {<id>: {json: <job.toJSON()> | null, state: "<state>" | "unknown"}},
//          lists: {<state>: ["<id>", ...]},
//          countsPerPriority?: {<priority>: n}}   (only when `priorities` is given)
import { Queue } from 'bullmq';

import { baseOpts, closeAll, runScript } from './common.mjs';

const ALL_STATES = [
  'active',
  'completed',
  'delayed',
  'failed',
  'paused',
  'prioritized',
  'waiting',
  'waiting-children',
];

runScript('inspect', async (input) => {
  const queue = new Queue(input.queue, { ...baseOpts(input), skipMetasUpdate: true });
  queue.on('error', (err) => process.stderr.write(`queue error: ${err.message}\n`));
  try {
    const out = {};
    out.counts = await queue.getJobCounts(...ALL_STATES);
    out.isPaused = await queue.isPaused();
    out.meta = await queue.getMeta();

    out.jobs = {};
    for (const rawId of input.ids ?? []) {
      const id = String(rawId);
      const job = await queue.getJob(id);
      if (job) {
        out.jobs[id] = { json: job.toJSON(), state: await job.getState() };
      } else {
        out.jobs[id] = { json: null, state: await queue.getJobState(id) };
      }
    }

    const start = input.start ?? 0;
    const end = input.end ?? -1;
    const asc = Boolean(input.asc);
    out.lists = {};
    for (const state of input.states ?? ALL_STATES) {
      const jobs = await queue.getJobs([state], start, end, asc);
      out.lists[state] = jobs.map((job) => String(job.id));
    }

    if (Array.isArray(input.priorities)) {
      out.countsPerPriority = await queue.getCountsPerPriority(input.priorities);
    }
    return out;
  } finally {
    await closeAll([queue]);
  }
});
