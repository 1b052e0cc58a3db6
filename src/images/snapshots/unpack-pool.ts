/**
 * Layer unpacking on worker threads. Unpacking is CPU work on every byte (inflate,
 * sha256 of the tar stream, tar parsing): on berthd's main thread it would compete with
 * the gRPC server kubelet polls every few seconds, and it would use one core only. A
 * small pool of workers (one per core, created on first use) runs `unpackLayer` on
 * blobs already verified in the content store.
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
import { Worker } from 'node:worker_threads';
import { BerthError, type ErrorKind } from '../../common/errors.js';
import { trimMalloc } from '../../common/malloc-trim.js';
import type { Budget, GrantFn, LayerCompression, UnpackOptions, UnpackResult } from './unpack.js';

export interface UnpackJob {
  blobPath: string;
  compression: LayerCompression;
  target: string;
  opts: Omit<UnpackOptions, 'signal' | 'grant'> & {
    /** Whether the worker asks this thread for grants (UnpackOptions.grant). */
    granted?: boolean;
  };
}

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
  busy: boolean;
  /** The job id it is running, if busy. */
  job: number | undefined;
  /** Terminates it when it stays idle (armed while not busy). */
  idleTimer: NodeJS.Timeout | undefined;
}

/** How long a worker may stay without a job before it is terminated. */
export const UNPACK_WORKER_IDLE_MS = 10_000;

const WORKER_URL = new URL('./unpack-worker.js', import.meta.url);

export class UnpackPool {
  private readonly slots: Slot[] = [];
  private readonly waiting: Array<() => void> = [];
  private readonly pending = new Map<number, { resolve(r: UnpackResult): void; reject(e: unknown): void; grant: GrantFn | undefined }>();
  private nextId = 1;
  private closed = false;

  constructor(
    private readonly size: number = Math.max(1, Math.min(4, availableParallelism())),
    private readonly idleMs: number = UNPACK_WORKER_IDLE_MS,
  ) {}

  /** Workers alive now (idle or busy). */
  get workers(): number {
    return this.slots.length;
  }

  private spawn(): Slot {
    const worker = new Worker(WORKER_URL);
    worker.unref();
    const slot: Slot = { worker, busy: false, job: undefined, idleTimer: undefined };
    worker.on('message', (m: Reply | GrantRequest) => {
      if ('type' in m) return this.answerGrant(worker, m);
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(m.kind ? new BerthError(m.kind, m.message) : new Error(m.message));
    });
    // A worker that dies (error or exit) takes its job with it and leaves the pool; a
    // new one is spawned on demand.
    const drop = (why: unknown): void => {
      clearTimeout(slot.idleTimer);
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots.splice(i, 1);
      if (this.slots.length === 0) trimMalloc();
      if (slot.job !== undefined) {
        this.pending.get(slot.job)?.reject(why);
        this.pending.delete(slot.job);
      }
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

  /** A free slot, marked busy before anyone else can see it; waits (abortably) if none. */
  private async acquire(signal: AbortSignal | undefined): Promise<Slot> {
    for (;;) {
      if (this.closed) throw new BerthError('Unavailable', 'berthd is shutting down');
      if (signal?.aborted) throw signal.reason;
      const slot = this.slots.find((s) => !s.busy) ?? (this.slots.length < this.size ? this.spawn() : undefined);
      if (slot) {
        slot.busy = true;
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

  /**
   * Unpacks one layer on a worker; an abort stops it there and waits for its cleanup.
   * `grant` (UnpackOptions.grant) runs on this thread.
   */
  async run(job: UnpackJob, signal?: AbortSignal, grant?: GrantFn): Promise<UnpackResult> {
    const slot = await this.acquire(signal);
    const id = this.nextId++;
    slot.job = id;
    const onAbort = (): void => slot.worker.postMessage({ type: 'abort', id });
    try {
      const done = new Promise<UnpackResult>((resolve, reject) => this.pending.set(id, { resolve, reject, grant }));
      slot.worker.postMessage({ type: 'unpack', id, job: { ...job, opts: { ...job.opts, granted: grant !== undefined } } });
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });
      try {
        return await done;
      } catch (err) {
        throw signal?.aborted ? signal.reason : err;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      slot.busy = false;
      slot.job = undefined;
      this.armIdle(slot);
      this.wake();
    }
  }

  /** Terminates an idle worker after idleMs (its 'exit' then drops it from the pool). */
  private armIdle(slot: Slot): void {
    clearTimeout(slot.idleTimer);
    slot.idleTimer = setTimeout(() => {
      if (slot.busy || this.closed) return;
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
