/**
 * Worker thread side of UnpackPool: unpacks layers it is sent, one at a time, and
 * answers with the result or the error's kind and message.
 */
import { createReadStream } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { BerthError, messageOf } from '../../common/errors.js';
import type { GrantAnswer, GrantRequest, UnpackJob } from './unpack-pool.js';
import { unpackLayer, type Budget, type GrantFn } from './unpack.js';

if (!parentPort) throw new Error('unpack-worker.js runs only as a worker thread');
const port = parentPort;

const running = new Map<number, AbortController>();
/** Grant requests waiting for the main thread's answer, by sequence number. */
const grants = new Map<number, { resolve(b: Budget): void; reject(e: unknown): void }>();
let nextGrant = 1;

/** Job `id`'s grants, asked of the main thread. */
function grantOf(id: number): GrantFn {
  return (used, need) =>
    new Promise<Budget>((resolve, reject) => {
      const seq = nextGrant++;
      grants.set(seq, { resolve, reject });
      port.postMessage({ type: 'grant', id, seq, used, need } satisfies GrantRequest);
    });
}

port.on('message', (m: { type: 'unpack'; id: number; job: UnpackJob } | { type: 'abort'; id: number } | GrantAnswer) => {
  if (m.type === 'granted') {
    const g = grants.get(m.seq);
    grants.delete(m.seq);
    if (m.ok) g?.resolve(m.budget);
    else g?.reject(m.kind ? new BerthError(m.kind, m.message) : new Error(m.message));
    return;
  }
  if (m.type === 'abort') {
    running.get(m.id)?.abort(new BerthError('Cancelled', 'unpack cancelled'));
    return;
  }
  const ac = new AbortController();
  running.set(m.id, ac);
  const { granted, ...opts } = m.job.opts;
  const job = m.job;
  const grant = granted ? { grant: grantOf(m.id) } : {};
  unpackLayer(createReadStream(job.blobPath, { highWaterMark: 1 << 20 }), job.compression, job.target, { ...opts, ...grant, signal: ac.signal })
    .then(
      (result) => port.postMessage({ id: m.id, ok: true, result }),
      (err: unknown) => port.postMessage({ id: m.id, ok: false, kind: err instanceof BerthError ? err.kind : undefined, message: messageOf(err) }),
    )
    .finally(() => running.delete(m.id));
});
