/**
 * Worker thread side of UnpackPool: unpacks the layers it is sent, from a blob file or
 * streamed from the main thread (blob-intake.ts), and answers each with the result or the
 * error's kind and message.
 */
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { parentPort } from 'node:worker_threads';
import { BerthError, messageOf } from '../../common/errors.js';
import { BlobIntake, type IntakeMessage } from './blob-intake.js';
import type { GrantAnswer, GrantRequest, JobOptions, StreamJob, UnpackJob } from './unpack-pool.js';
import { unpackLayer, type Budget, type GrantFn, type LayerCompression } from './unpack.js';

if (!parentPort) throw new Error('unpack-worker.js runs only as a worker thread');
const port = parentPort;

const running = new Map<number, AbortController>();
/** Grant requests waiting for the main thread's answer, by sequence number. */
const grants = new Map<number, { resolve(b: Budget): void; reject(e: unknown): void }>();
let nextGrant = 1;
const intakes = new Map<number, BlobIntake>();

type Message =
  | { type: 'unpack'; id: number; job: UnpackJob }
  | { type: 'stream'; id: number; job: StreamJob }
  | { type: 'chunks'; id: number; chunks: Uint8Array[] }
  | { type: 'end'; id: number }
  | { type: 'abort'; id: number }
  | GrantAnswer;

/** Job `id`'s grants, asked of the main thread. */
function grantOf(id: number): GrantFn {
  return (used, need) =>
    new Promise<Budget>((resolve, reject) => {
      const seq = nextGrant++;
      grants.set(seq, { resolve, reject });
      port.postMessage({ type: 'grant', id, seq, used, need } satisfies GrantRequest);
    });
}

function unpack(id: number, source: Readable, compression: LayerCompression, target: string, jobOpts: JobOptions): void {
  const ac = new AbortController();
  running.set(id, ac);
  const { granted, ...opts } = jobOpts;
  const grant = granted ? { grant: grantOf(id) } : {};
  unpackLayer(source, compression, target, { ...opts, ...grant, signal: ac.signal })
    .then(
      (result) => port.postMessage({ id, ok: true, result }),
      (err: unknown) => port.postMessage({ id, ok: false, kind: err instanceof BerthError ? err.kind : undefined, message: messageOf(err) }),
    )
    .finally(() => running.delete(id));
}

port.on('message', (m: Message) => {
  switch (m.type) {
    case 'granted': {
      const g = grants.get(m.seq);
      grants.delete(m.seq);
      if (m.ok) g?.resolve(m.budget);
      else g?.reject(m.kind ? new BerthError(m.kind, m.message) : new Error(m.message));
      return;
    }
    case 'chunks':
      intakes.get(m.id)?.chunks(m.chunks);
      return;
    case 'end':
      intakes.get(m.id)?.end();
      return;
    case 'abort':
      running.get(m.id)?.abort(new BerthError('Cancelled', 'unpack cancelled'));
      intakes.get(m.id)?.abort();
      return;
    case 'unpack':
      unpack(m.id, createReadStream(m.job.blobPath, { highWaterMark: 1 << 20 }), m.job.compression, m.job.target, m.job.opts);
      return;
    case 'stream': {
      const intake = new BlobIntake(m.id, m.job.tmpPath, m.job.alg, (msg: IntakeMessage) => {
        if (msg.type === 'blob') intakes.delete(m.id);
        port.postMessage(msg);
      });
      if (!intake.done) intakes.set(m.id, intake);
      unpack(m.id, intake.source, m.job.compression, m.job.target, m.job.opts);
      return;
    }
  }
});
