// publish.mjs: publishes one custom event with BullMQ's QueueEventsProducer.
//
// input:  {url, prefix?, queue, name, fields?: {<field>: value}, maxEvents?, timeoutMs?}
//         String field values are sent as they are; other values as their JSON text.
// output: {ok: true}
import { QueueEventsProducer } from 'bullmq';

import { baseOpts, closeAll, runScript } from './common.mjs';

runScript('publish', async (input) => {
  if (typeof input.name !== 'string' || input.name.length === 0) {
    throw new Error('input.name (the event name) is required');
  }
  const payload = {};
  for (const [key, value] of Object.entries(input.fields ?? {})) {
    payload[key] = typeof value === 'string' ? value : JSON.stringify(value);
  }
  payload.eventName = input.name;

  const producer = new QueueEventsProducer(input.queue, baseOpts(input));
  producer.on('error', (err) => process.stderr.write(`producer error: ${err.message}\n`));
  try {
    if (input.maxEvents === undefined) {
      await producer.publishEvent(payload);
    } else {
      await producer.publishEvent(payload, input.maxEvents);
    }
    return { ok: true };
  } finally {
    await closeAll([producer]);
  }
});
