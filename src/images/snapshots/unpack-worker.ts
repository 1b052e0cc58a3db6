/**
 * Worker thread side of UnpackPool: unpacks layers it is sent, one at a time, and
 * answers with the result or the error's kind and message.
 */
import { createReadStream } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { BerthError, messageOf } from '../../common/errors.js';
import type { UnpackJob } from './unpack-pool.js';
import { unpackLayer } from './unpack.js';

const port = parentPort;
if (!port) throw new Error('unpack-worker.js runs only as a worker thread');

const running = new Map<number, AbortController>();

port.on('message', (m: { type: 'unpack'; id: number; job: UnpackJob } | { type: 'abort'; id: number }) => {
  if (m.type === 'abort') {
    running.get(m.id)?.abort(new BerthError('Cancelled', 'unpack cancelled'));
    return;
  }
  const ac = new AbortController();
  running.set(m.id, ac);
  const { job } = m;
  unpackLayer(createReadStream(job.blobPath, { highWaterMark: 1 << 20 }), job.compression, job.target, { ...job.opts, signal: ac.signal })
    .then(
      (result) => port.postMessage({ id: m.id, ok: true, result }),
      (err: unknown) => port.postMessage({ id: m.id, ok: false, kind: err instanceof BerthError ? err.kind : undefined, message: messageOf(err) }),
    )
    .finally(() => running.delete(m.id));
});
