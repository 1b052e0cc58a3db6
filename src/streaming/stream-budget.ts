/**
 * A count of things open at once (SPDY streams, port-forward connections) shared by
 * the sessions of one streaming server, so that many clients together cannot open more
 * than `max` of them.
 */
export class StreamBudget {
  private used = 0;

  constructor(readonly max: number) {}

  /** Takes one; false when none is left. */
  take(): boolean {
    if (this.used >= this.max) return false;
    this.used++;
    return true;
  }

  /** Gives one back. */
  release(): void {
    if (this.used > 0) this.used--;
  }

  /** How many are taken. */
  get inUse(): number {
    return this.used;
  }
}
