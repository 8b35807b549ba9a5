// produce.mjs: adds jobs with a BullMQ Queue.
//
// input:  {url, prefix?, queue, jobs: [{name, data?, opts?}], bulk?: false, timeoutMs?}
// output: {ids: ["<job id>", ...]}   (strings, in the order of `jobs`)
import { Queue } from 'bullmq';

import { baseOpts, closeAll, runScript } from './common.mjs';

runScript('produce', async (input) => {
  if (!Array.isArray(input.jobs)) {
    throw new Error('input.jobs must be an array of {name, data, opts}');
  }
  const specs = input.jobs.map((j, i) => {
    if (j === null || typeof j !== 'object' || typeof j.name !== 'string') {
      throw new Error(`input.jobs[${i}] needs a string name`);
    }
    return { name: j.name, data: j.data ?? {}, opts: j.opts ?? {} };
  });

  const queue = new Queue(input.queue, baseOpts(input));
  queue.on('error', (err) => process.stderr.write(`queue error: ${err.message}\n`));
  try {
    let jobs;
    if (input.bulk) {
      jobs = await queue.addBulk(specs);
    } else {
      jobs = [];
      for (const s of specs) {
        jobs.push(await queue.add(s.name, s.data, s.opts));
      }
    }
    return { ids: jobs.map((job) => String(job.id)) };
  } finally {
    await closeAll([queue]);
  }
});
