// events.mjs: records what a BullMQ QueueEvents emits, reading the events stream
// from `lastEventId` (default "0-0": from the start, so nothing is missed).
//
// input:  {url, prefix?, queue, lastEventId?: "0-0", expect: N, timeoutMs?: 20000}
//   expect: 0 listens for the whole timeoutMs and reports timedOut: false.
// output: {events: [{event, args, id}, ...], timedOut: bool}
//   event: the emitted name ("added", "waiting", "active", "completed", a custom
//   name, ...); args: the emitted payload object ({} for "drained"); id: the
//   stream entry id. The per-job duplicates QueueEvents also emits
//   ("<event>:<jobId>") and connection noise ("error", "ioredis:*") are left out.
import { QueueEvents } from 'bullmq';

import { baseOpts, closeAll, runScript } from './common.mjs';

function isNoise(name, payload) {
  if (typeof name !== 'string') return true;
  if (name === 'error' || name.startsWith('ioredis')) return true;
  // Internal EventEmitter bookkeeping.
  if (name === 'newListener' || name === 'removeListener') return true;
  const jobId = payload && typeof payload === 'object' ? payload.jobId : undefined;
  return jobId !== undefined && name.endsWith(`:${jobId}`) && name.length > `:${jobId}`.length;
}

runScript(
  'events',
  async (input, timeoutMs) => {
    const expect = Number(input.expect ?? 0);
    if (!Number.isInteger(expect) || expect < 0) {
      throw new Error('input.expect must be a non-negative integer');
    }
    const events = [];
    let finish;
    const done = new Promise((resolve) => {
      finish = resolve;
    });

    const queueEvents = new QueueEvents(input.queue, {
      ...baseOpts(input),
      autorun: false,
      lastEventId: input.lastEventId ?? '0-0',
    });
    queueEvents.on('error', (err) => process.stderr.write(`queue events error: ${err.message}\n`));

    const emit = queueEvents.emit.bind(queueEvents);
    queueEvents.emit = (name, ...args) => {
      const [first, second] = args;
      if (!isNoise(name, first)) {
        if (args.length === 1 && typeof first === 'string') {
          events.push({ event: name, args: {}, id: first });
        } else {
          events.push({ event: name, args: first ?? {}, id: second ?? null });
        }
        if (expect > 0 && events.length >= expect) {
          finish(false);
        }
      }
      return emit(name, ...args);
    };

    queueEvents.run().catch((err) => {
      process.stderr.write(`queue events stopped: ${err && err.message}\n`);
    });

    const timer = setTimeout(() => finish(expect > 0), timeoutMs);
    timer.unref();
    const timedOut = await done;
    clearTimeout(timer);

    await closeAll([queueEvents]);
    return { events: events.slice(0, expect > 0 ? expect : events.length), timedOut };
  },
  { selfBounded: true },
);
