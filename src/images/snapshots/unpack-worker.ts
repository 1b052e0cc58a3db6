/**
 * Worker thread side of UnpackPool: unpacks the layers it is sent, from a blob file or
 * streamed from the main thread (blob-intake.ts), and answers each with the result or the
 * error's kind and message.
 */
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { parentPort } from 'node:worker_threads';
import { BerthError, messageOf } from '../../common/errors.js';
import type { BlobRequest } from '../registry/client.js';
import { fetchBlob, type FetchTarget } from './blob-fetch.js';
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
/** Bytes of a download between two progress reports to the main thread. */
const PROGRESS_BYTES = 4 << 20;
/** Blobs this worker downloads itself (blob-fetch.ts), by job id: their intake's acks stay here. */
const fetches = new Map<number, { target: FetchTarget & { pending: number }; ac: AbortController; closed?: IntakeMessage }>();

type Message =
  | { type: 'unpack'; id: number; job: UnpackJob }
  | { type: 'stream'; id: number; job: StreamJob }
  | { type: 'chunks'; id: number; chunks: Uint8Array[] }
  | { type: 'end'; id: number }
  | { type: 'fetch'; id: number; req: BlobRequest; size: number; what: string }
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
      fetches.get(m.id)?.ac.abort(new BerthError('Cancelled', 'download cancelled'));
      intakes.get(m.id)?.abort();
      return;
    case 'fetch': {
      const intake = intakes.get(m.id);
      if (!intake || fetches.has(m.id)) {
        port.postMessage({ type: 'fetched', id: m.id, outcome: { ok: false, fallback: true, why: 'the blob intake is closed' } });
        return;
      }
      const ac = new AbortController();
      // Progress goes to the main thread (pull progress, trace points): the first bytes at
      // once, then every PROGRESS_BYTES.
      let unreported = 0;
      let reported = false;
      const target = {
        pending: 0,
        onDrain: undefined as (() => void) | undefined,
        chunk(c: Buffer) {
          target.pending += c.length;
          intake.chunks([c]);
          unreported += c.length;
          if (!reported || unreported >= PROGRESS_BYTES) {
            reported = true;
            port.postMessage({ type: 'progress', id: m.id, bytes: unreported });
            unreported = 0;
          }
        },
        end: () => intake.end(),
        abort: () => intake.abort(),
      };
      const record: { target: typeof target; ac: AbortController; closed?: IntakeMessage } = { target, ac };
      fetches.set(m.id, record);
      void fetchBlob(m.req, m.size, m.what, target, ac.signal).then((outcome) => {
        fetches.delete(m.id);
        if (unreported > 0 && outcome.ok) port.postMessage({ type: 'progress', id: m.id, bytes: unreported });
        port.postMessage({ type: 'fetched', id: m.id, outcome });
        if (record.closed) port.postMessage(record.closed);
      });
      return;
    }
    case 'unpack':
      unpack(m.id, createReadStream(m.job.blobPath, { highWaterMark: 1 << 20 }), m.job.compression, m.job.target, m.job.opts);
      return;
    case 'stream': {
      const intake = new BlobIntake(m.id, m.job.tmpPath, m.job.alg, (msg: IntakeMessage) => {
        const fetching = fetches.get(m.id);
        if (msg.type === 'blob') {
          intakes.delete(m.id);
          if (fetching) {
            // Reported after the download's outcome. A blob that failed to write stops its
            // download at once (its socket would stay paused).
            fetching.closed = msg;
            if (msg.error !== undefined) fetching.ac.abort(new BerthError('Unavailable', `writing the blob failed: ${msg.error}`));
            return;
          }
        }
        if (msg.type === 'ack' && fetching) {
          // This worker downloads the blob: its flow control stays here.
          fetching.target.pending -= msg.bytes;
          fetching.target.onDrain?.();
          return;
        }
        port.postMessage(msg);
      });
      if (!intake.done) intakes.set(m.id, intake);
      unpack(m.id, intake.source, m.job.compression, m.job.target, m.job.opts);
      return;
    }
  }
});
