/**
 * Layer unpacking on worker threads. Unpacking is CPU work on every byte (inflate,
 * sha256 of the tar stream, tar parsing): on berthd's main thread it would compete with
 * the gRPC server kubelet polls every few seconds, and it would use one core only. A
 * small pool of workers (one per core, at least three: a pull's three downloads at once,
 * by default, each get a thread; created on first use) runs `unpackLayer`, either
 * on a blob already verified in the content store (`run`) or on a blob as it downloads
 * (`stream`: the worker also hashes it and writes it to the content store's temp file, see
 * blob-intake.ts; the worker may download the blob itself, see blob-fetch.ts, so its bytes
 * never cross the main thread). A worker takes up to {@link JOBS_PER_WORKER} layers at once, so a
 * layer's tail (the last unpacked bytes, the blob's fsync) overlaps the next one's start.
 *
 * A worker is a whole V8 isolate with its own heap, and the 1 MiB read and inflate
 * buffers it allocates land in a glibc malloc arena of its thread: measured after three
 * pulls of a 160 MB image, two idle workers held ~70 MiB of berthd's RSS. So a worker
 * that has had no job for `idleMs` is terminated, and when the last one is gone the
 * freed arenas go back to the kernel (malloc_trim). Starting a worker again costs a few
 * tens of milliseconds, against seconds of unpacking.
 *
 * An unpack's shared limits are granted on this thread (see pull-limits.ts): the worker
 * asks with a 'grant' message and waits for the 'granted' answer.
 */
import { availableParallelism } from 'node:os';
import { Writable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { BerthError, type ErrorKind } from '../../common/errors.js';
import { trimMalloc } from '../../common/malloc-trim.js';
import type { BlobRequest } from '../registry/client.js';
import type { FetchOutcome } from './blob-fetch.js';
import type { IntakeMessage } from './blob-intake.js';
import type { Budget, GrantFn, LayerCompression, UnpackOptions, UnpackResult } from './unpack.js';

/** A job's unpack options; its grants (UnpackOptions.grant) are asked of the main thread. */
export type JobOptions = Omit<UnpackOptions, 'signal' | 'grant'> & {
  /** Whether the worker asks the main thread for grants (UnpackOptions.grant). */
  granted?: boolean;
};

export interface UnpackJob {
  blobPath: string;
  compression: LayerCompression;
  target: string;
  opts: JobOptions;
}

/** A layer unpacked while its blob downloads: the bytes come through {@link StreamSink}. */
export interface StreamJob {
  /** The content store's temp file for the blob (created, written, synced and closed by the worker). */
  tmpPath: string;
  /** The blob digest's algorithm. */
  alg: 'sha256' | 'sha512';
  compression: LayerCompression;
  target: string;
  opts: JobOptions;
}

/** Where the main thread writes a streamed blob's bytes (see ContentStore's BlobSink). */
export interface StreamSink {
  /** Takes the blob's bytes in order; finishes once the worker has them all in the file, synced. */
  readonly writable: Writable;
  /** The hex digest of the bytes written (after `writable` finished). */
  seal(): Promise<string>;
  /** Settles once the temp file is closed, whatever happened. */
  readonly closed: Promise<void>;
  /**
   * Has the worker download the blob itself (blob-fetch.ts) instead of taking its bytes
   * through `writable`; `what` names the blob in messages. On a `fallback` outcome nothing
   * reached the worker's intake: write the blob to `writable` as usual.
   */
  fetch(req: BlobRequest, size: number, what: string, onBytes?: (n: number) => void): Promise<FetchOutcome>;
}

/** A worker's reports of a download it does itself: bytes so far, and its end. */
type FetchedMessage = { type: 'fetched'; id: number; outcome: FetchOutcome } | { type: 'progress'; id: number; bytes: number };

type Reply = { id: number; ok: true; result: UnpackResult } | { id: number; ok: false; kind: ErrorKind | undefined; message: string };
/** A worker's request for a grant (see UnpackOptions.grant), and its answer. */
export interface GrantRequest {
  type: 'grant';
  id: number;
  seq: number;
  used: Budget;
  need: Budget;
}
export type GrantAnswer =
  { type: 'granted'; seq: number; ok: true; budget: Budget } | { type: 'granted'; seq: number; ok: false; kind: ErrorKind | undefined; message: string };

interface Slot {
  worker: Worker;
  /** The ids of the jobs it runs. */
  jobs: Set<number>;
  /**
   * Those of its jobs with bytes still to come: a download under way, or an unpack from
   * a stored blob. A job past its download's end (its last bytes unpacking, its file
   * syncing) leaves the worker nearly free.
   */
  receiving: Set<number>;
  /** Terminates it when it stays idle (armed while it has no job). */
  idleTimer: NodeJS.Timeout | undefined;
}

/** How long a worker may stay without a job before it is terminated. */
export const UNPACK_WORKER_IDLE_MS = 10_000;
/** Layers one worker unpacks at once. */
export const JOBS_PER_WORKER = 2;
/** Bytes of a streamed blob sent to the worker and not yet in its file. */
const STREAM_WINDOW = 8 << 20;
/** Bytes gathered into one message to the worker. */
const STREAM_BATCH = 1 << 20;

const WORKER_URL = new URL('./unpack-worker.js', import.meta.url);

/** The main thread's end of a streamed blob: messages from the worker about it. */
interface BlobChannel {
  ack(bytes: number): void;
  closed(m: { digest?: string; error?: string; code?: string }): void;
  /** The worker's download (StreamSink.fetch) ended. */
  fetched(o: FetchOutcome): void;
  /** The worker's download took `bytes` more. */
  progress(bytes: number): void;
}

/**
 * Of busy workers with room for a job, the one receiving the fewest bytes, then the one
 * with the fewest jobs (the first among equals): two downloads on one worker while
 * another only syncs a file would leave a core idle.
 */
export function leastBusy<S extends Pick<Slot, 'jobs' | 'receiving'>>(slots: S[]): S | undefined {
  let best: S | undefined;
  for (const s of slots) {
    if (s.jobs.size >= JOBS_PER_WORKER) continue;
    if (!best || s.receiving.size < best.receiving.size || (s.receiving.size === best.receiving.size && s.jobs.size < best.jobs.size)) best = s;
  }
  return best;
}

export class UnpackPool {
  private readonly slots: Slot[] = [];
  private readonly waiting: Array<() => void> = [];
  private readonly pending = new Map<number, { resolve(r: UnpackResult): void; reject(e: unknown): void; grant: GrantFn | undefined }>();
  private readonly blobs = new Map<number, BlobChannel>();
  private nextId = 1;
  private closed = false;

  constructor(
    private readonly size: number = Math.min(4, Math.max(3, availableParallelism())),
    private readonly idleMs: number = UNPACK_WORKER_IDLE_MS,
  ) {}

  /** Workers alive now (idle or busy). */
  get workers(): number {
    return this.slots.length;
  }

  private spawn(): Slot {
    const worker = new Worker(WORKER_URL);
    worker.unref();
    const slot: Slot = { worker, jobs: new Set(), receiving: new Set(), idleTimer: undefined };
    worker.on('message', (m: Reply | IntakeMessage | GrantRequest | FetchedMessage) => {
      if ('type' in m) {
        if (m.type === 'grant') return this.answerGrant(worker, m);
        const ch = this.blobs.get(m.id);
        if (m.type === 'ack') ch?.ack(m.bytes);
        else if (m.type === 'fetched') ch?.fetched(m.outcome);
        else if (m.type === 'progress') ch?.progress(m.bytes);
        else {
          this.blobs.delete(m.id);
          ch?.closed(m);
        }
        return;
      }
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(m.kind ? new BerthError(m.kind, m.message) : new Error(m.message));
    });
    // A worker that dies (error or exit) takes its jobs with it and leaves the pool; a
    // new one is spawned on demand.
    const drop = (why: unknown): void => {
      clearTimeout(slot.idleTimer);
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots.splice(i, 1);
      if (this.slots.length === 0) trimMalloc();
      for (const id of slot.jobs) {
        this.pending.get(id)?.reject(why);
        this.pending.delete(id);
        const ch = this.blobs.get(id);
        this.blobs.delete(id);
        ch?.fetched({ ok: false, fallback: false, kind: 'Internal', message: `unpack worker failed: ${String(why)}` });
        ch?.closed({ error: String(why) });
      }
      slot.jobs.clear();
      this.wake();
    };
    worker.on('error', drop);
    worker.on('exit', (code) => drop(new BerthError('Internal', `unpack worker exited with code ${code}`)));
    this.slots.push(slot);
    return slot;
  }

  /** Answers a worker's grant request, always (the unpack waits for it). */
  private answerGrant(worker: Worker, m: GrantRequest): void {
    const grant = this.pending.get(m.id)?.grant;
    const asked = grant ? grant(m.used, m.need) : Promise.reject(new BerthError('Internal', `unpack job ${m.id} asked for a grant it has no source for`));
    asked.then(
      (budget) => worker.postMessage({ type: 'granted', seq: m.seq, ok: true, budget } satisfies GrantAnswer),
      (err: unknown) =>
        worker.postMessage({
          type: 'granted',
          seq: m.seq,
          ok: false,
          kind: err instanceof BerthError ? err.kind : undefined,
          message: err instanceof Error ? err.message : String(err),
        } satisfies GrantAnswer),
    );
  }

  private wake(): void {
    this.waiting.shift()?.();
  }

  /**
   * A slot for one more job, counted before anyone else can see it: an idle worker, else a
   * new one while the pool has room, else the least busy with room; waits (abortably) if none.
   */
  private async acquire(signal: AbortSignal | undefined, id: number): Promise<Slot> {
    for (;;) {
      if (this.closed) throw new BerthError('Unavailable', 'berthd is shutting down');
      if (signal?.aborted) throw signal.reason;
      let slot = this.slots.find((s) => s.jobs.size === 0) ?? (this.slots.length < this.size ? this.spawn() : undefined);
      slot ??= leastBusy(this.slots);
      if (slot) {
        slot.jobs.add(id);
        slot.receiving.add(id);
        clearTimeout(slot.idleTimer);
        slot.idleTimer = undefined;
        return slot;
      }
      await new Promise<void>((resolve) => {
        const onAbort = (): void => {
          const i = this.waiting.indexOf(wakeUp);
          if (i >= 0) this.waiting.splice(i, 1);
          resolve();
        };
        const wakeUp = (): void => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
        this.waiting.push(wakeUp);
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    }
  }

  /** Gives a job's place back. */
  private release(slot: Slot, id: number): void {
    slot.jobs.delete(id);
    slot.receiving.delete(id);
    if (slot.jobs.size === 0) this.armIdle(slot);
    this.wake();
  }

  /**
   * Posts a job and returns its result; an abort stops it there and waits for its cleanup.
   * `grant` (UnpackOptions.grant) answers the job's grant requests, on this thread.
   */
  private async start(slot: Slot, id: number, message: unknown, signal: AbortSignal | undefined, grant: GrantFn | undefined): Promise<UnpackResult> {
    const onAbort = (): void => slot.worker.postMessage({ type: 'abort', id });
    try {
      const done = new Promise<UnpackResult>((resolve, reject) => this.pending.set(id, { resolve, reject, grant }));
      slot.worker.postMessage(message);
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });
      try {
        return await done;
      } catch (err) {
        throw signal?.aborted ? signal.reason : err;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Unpacks one layer from its blob file on a worker; an abort stops it there and waits for
   * its cleanup. `grant` (UnpackOptions.grant) runs on this thread.
   */
  async run(job: UnpackJob, signal?: AbortSignal, grant?: GrantFn): Promise<UnpackResult> {
    const id = this.nextId++;
    const slot = await this.acquire(signal, id);
    try {
      return await this.start(slot, id, { type: 'unpack', id, job: { ...job, opts: { ...job.opts, granted: grant !== undefined } } }, signal, grant);
    } finally {
      this.release(slot, id);
    }
  }

  /**
   * Unpacks one layer on a worker while its blob downloads: the caller writes the blob's
   * bytes to `sink.writable`; the worker hashes them, writes them to `job.tmpPath` and
   * unpacks them. `result` settles once the unpack is over and the temp file closed; an
   * abort (or destroying the writable) stops both. `grant` runs on this thread, as for run.
   */
  async stream(job: StreamJob, signal?: AbortSignal, grant?: GrantFn): Promise<{ sink: StreamSink; result: Promise<UnpackResult> }> {
    const id = this.nextId++;
    const slot = await this.acquire(signal, id);
    const worker = slot.worker;
    let inflight = 0;
    let held: (() => void) | undefined;
    let batch: Uint8Array[] = [];
    let batchBytes = 0;
    let flushing: NodeJS.Immediate | undefined;
    let fileClosed!: (m: { digest?: string; error?: string; code?: string }) => void;
    const outcome = new Promise<{ digest?: string; error?: string; code?: string }>((resolve) => (fileClosed = resolve));
    let fetching: ((o: FetchOutcome) => void) | undefined;
    let fetchProgress: ((n: number) => void) | undefined;
    this.blobs.set(id, {
      progress: (n) => fetchProgress?.(n),
      fetched: (o) => {
        // After a fallback, the bytes come through the writable instead.
        if (o.ok || !o.fallback) slot.receiving.delete(id);
        const done = fetching;
        fetching = undefined;
        done?.(o);
      },
      ack: (bytes) => {
        inflight -= bytes;
        if (held && inflight < STREAM_WINDOW) {
          const cb = held;
          held = undefined;
          cb();
        }
      },
      closed: (m) => {
        fileClosed(m);
        // The worker answers a download before its file closes; nothing more comes for it after.
        fetching?.({ ok: false, fallback: false, kind: 'Internal', message: `writing the blob failed: ${m.error ?? 'closed'}` });
      },
    });
    const flush = (): void => {
      clearImmediate(flushing);
      flushing = undefined;
      if (batch.length === 0) return;
      const chunks = batch;
      batch = [];
      batchBytes = 0;
      worker.postMessage(
        { type: 'chunks', id, chunks },
        chunks.map((c) => c.buffer as ArrayBuffer),
      );
    };
    const sealed = outcome.then((m) => {
      if (m.digest !== undefined) return m.digest;
      const err = new Error(`writing the blob failed: ${m.error}`) as NodeJS.ErrnoException;
      if (m.code) err.code = m.code;
      throw err;
    });
    sealed.catch(() => undefined);
    let ended = false;
    const writable = new Writable({
      write(chunk: Buffer, _enc, cb) {
        // Moved to the worker, not copied, when the chunk owns its memory (the HTTP
        // parser's body chunks do); a view into shared memory is copied first.
        const own = chunk.byteOffset === 0 && chunk.buffer.byteLength === chunk.length;
        batch.push(own ? new Uint8Array(chunk.buffer, 0, chunk.length) : new Uint8Array(chunk));
        batchBytes += chunk.length;
        inflight += chunk.length;
        if (batchBytes >= STREAM_BATCH) flush();
        else flushing ??= setImmediate(flush);
        if (inflight < STREAM_WINDOW) cb();
        else held = cb;
      },
      final(cb) {
        flush();
        ended = true;
        slot.receiving.delete(id);
        worker.postMessage({ type: 'end', id });
        sealed.then(
          () => cb(),
          (err: Error) => cb(err),
        );
      },
      destroy(err, cb) {
        slot.receiving.delete(id);
        clearImmediate(flushing);
        batch = [];
        held = undefined;
        // Stops the worker's intake; a finished one has closed its file already.
        if (!ended || err) worker.postMessage({ type: 'abort', id });
        cb(err);
      },
    });
    // Its errors reach whoever pipes into it; unused (the worker downloads), it must not
    // throw them as unhandled 'error' events.
    writable.on('error', () => undefined);
    // A write error in the worker fails the writable (and so the download).
    void sealed.catch((err: Error) => {
      if (!writable.destroyed) writable.destroy(err);
    });
    const result = this.start(slot, id, { type: 'stream', id, job: { ...job, opts: { ...job.opts, granted: grant !== undefined } } }, signal, grant);
    const settled = Promise.allSettled([result, outcome]).then(() => this.release(slot, id));
    const fetch = (req: BlobRequest, size: number, what: string, onBytes?: (n: number) => void): Promise<FetchOutcome> =>
      new Promise<FetchOutcome>((resolve) => {
        if (fetching || ended || writable.destroyed || !this.blobs.has(id)) {
          resolve({ ok: false, fallback: true, why: 'the blob intake is in use or closed' });
          return;
        }
        fetching = resolve;
        fetchProgress = onBytes;
        worker.postMessage({ type: 'fetch', id, req, size, what });
      });
    return {
      sink: { writable, seal: () => sealed, closed: outcome.then(() => undefined), fetch },
      result: settled.then(() => result),
    };
  }

  /** Terminates an idle worker after idleMs (its 'exit' then drops it from the pool). */
  private armIdle(slot: Slot): void {
    clearTimeout(slot.idleTimer);
    slot.idleTimer = setTimeout(() => {
      if (slot.jobs.size > 0 || this.closed) return;
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots.splice(i, 1);
      void slot.worker.terminate();
    }, this.idleMs);
    slot.idleTimer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.slots) clearTimeout(s.idleTimer);
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
    this.slots.length = 0;
    for (const w of this.waiting.splice(0)) w();
  }
}
