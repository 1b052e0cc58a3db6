/**
 * Work that concurrent pulls share: a layer's download and unpack, a config blob. Each
 * piece runs once, under an AbortController of its own, for as long as some caller
 * waits for it. When the last waiting caller goes away (its signal aborts), the work is
 * aborted at once: a registry that trickles bytes cannot keep alive a download that no
 * pull wants any more. berthd's shutdown (the lifetime signal) aborts all of it.
 *
 * A caller that joins work that is being aborted does not inherit that abort: the new
 * run starts once the old one has cleaned up after itself.
 */
import { BerthError } from '../common/errors.js';

interface Running {
  /** The work itself, settling once it has cleaned up. */
  promise: Promise<unknown>;
  controller: AbortController;
  waiters: number;
  settled: boolean;
}

/** What {@link SharedWork.join} hands a caller. */
export interface Joined<T> {
  /** Settles with the work, or rejects with the caller's abort reason when the caller goes first. */
  caller: Promise<T>;
  /** The work itself, whoever waits for it (for work that depends on it). */
  shared: Promise<T>;
}

export class SharedWork {
  private readonly running = new Map<string, Running>();
  /** Work aborted for want of callers, still cleaning up, by key. */
  private readonly retiring = new Map<string, Promise<unknown>>();

  constructor(private readonly lifetime: AbortSignal) {}

  /** Joins the work under `key`, starting it with `start` when none runs. */
  join<T>(key: string, caller: AbortSignal | undefined, start: (signal: AbortSignal) => Promise<T>): Joined<T> {
    let entry = this.running.get(key);
    if (caller?.aborted) {
      // Gone before joining: nothing starts for this caller alone.
      const gone = Promise.reject(caller.reason as Error);
      gone.catch(() => undefined);
      return { caller: Promise.reject(caller.reason as Error), shared: (entry?.promise as Promise<T> | undefined) ?? gone };
    }
    if (!entry) entry = this.begin(key, start);
    entry.waiters++;
    return { caller: this.wait(key, entry, caller) as Promise<T>, shared: entry.promise as Promise<T> };
  }

  /** Resolves when no work runs or retires (each has cleaned up after itself). */
  async idle(): Promise<void> {
    while (this.running.size + this.retiring.size > 0) {
      await Promise.allSettled([...[...this.running.values()].map((r) => r.promise), ...this.retiring.values()]);
    }
  }

  private begin<T>(key: string, start: (signal: AbortSignal) => Promise<T>): Running {
    const controller = new AbortController();
    const onStop = (): void => controller.abort(this.lifetime.reason);
    if (this.lifetime.aborted) onStop();
    else this.lifetime.addEventListener('abort', onStop, { once: true });
    const before = this.retiring.get(key);
    const entry: Running = { promise: Promise.resolve(), controller, waiters: 0, settled: false };
    entry.promise = (async () => {
      if (before) await before.catch(() => undefined);
      controller.signal.throwIfAborted();
      return start(controller.signal);
    })().finally(() => {
      entry.settled = true;
      this.lifetime.removeEventListener('abort', onStop);
      if (this.running.get(key) === entry) this.running.delete(key);
      if (this.retiring.get(key) === entry.promise) this.retiring.delete(key);
    });
    // A rejection is observed by the callers; none may be left unhandled when all left.
    entry.promise.catch(() => undefined);
    this.running.set(key, entry);
    return entry;
  }

  private wait(key: string, entry: Running, caller: AbortSignal | undefined): Promise<unknown> {
    return new Promise((resolve, reject) => {
      let left = false;
      const leave = (): void => {
        if (left) return;
        left = true;
        caller?.removeEventListener('abort', onAbort);
        if (--entry.waiters > 0 || entry.settled) return;
        // Nobody waits any more: stop the work now; a later caller starts afresh.
        if (this.running.get(key) === entry) this.running.delete(key);
        this.retiring.set(key, entry.promise);
        entry.controller.abort(new BerthError('Cancelled', 'no pull waits for this transfer any more'));
      };
      const onAbort = (): void => {
        leave();
        reject(caller!.reason);
      };
      if (caller?.aborted) {
        onAbort();
        return;
      }
      caller?.addEventListener('abort', onAbort, { once: true });
      entry.promise.then(
        (v) => {
          leave();
          resolve(v);
        },
        (err: unknown) => {
          leave();
          reject(err);
        },
      );
    });
  }
}
