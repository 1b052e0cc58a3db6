/**
 * Whether berthd takes calls, and how many are in flight.
 *
 *   recovering ──ready()──▶ ready ──drain()──▶ draining
 *        └──────────────drain()───────────────────┘
 *
 * While recovering (start-up reconciliation of the database with the system) and
 * while draining (after SIGTERM) new calls get UNAVAILABLE so that kubelet retries;
 * calls already admitted run to completion, and {@link drained} tells when they have.
 */
export type ServingPhase = 'recovering' | 'ready' | 'draining';

export class ServingState {
  private phaseValue: ServingPhase = 'recovering';
  private inflightCount = 0;
  private waiters: Array<() => void> = [];
  private readonly drainStart = new AbortController();

  /** Aborted when draining starts: long-lived streams (GetContainerEvents) end then. */
  get draining(): AbortSignal {
    return this.drainStart.signal;
  }

  get phase(): ServingPhase {
    return this.phaseValue;
  }

  get inflight(): number {
    return this.inflightCount;
  }

  ready(): void {
    if (this.phaseValue === 'recovering') this.phaseValue = 'ready';
  }

  drain(): void {
    this.phaseValue = 'draining';
    this.drainStart.abort();
    if (this.inflightCount === 0) this.wake();
  }

  /** Admits a call, or returns why it is refused. Each admitted call must `leave()`. */
  enter(): string | undefined {
    if (this.phaseValue === 'recovering') {
      return 'berthd is recovering its state after start-up; retry shortly';
    }
    if (this.phaseValue === 'draining') return 'berthd is shutting down';
    this.inflightCount++;
    return undefined;
  }

  leave(): void {
    this.inflightCount--;
    if (this.inflightCount === 0 && this.phaseValue === 'draining') this.wake();
  }

  /** Resolves once draining and no call is in flight. */
  drained(): Promise<void> {
    if (this.phaseValue === 'draining' && this.inflightCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
