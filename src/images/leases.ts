/**
 * Leases: reference-counted protection of the blobs and snapshots that pulls are
 * working on. Garbage collection keeps whatever is held, so a pull never loses a layer
 * it has fetched but not yet recorded in an image.
 */

/** Held keys (blob digests and chain IDs), each counted by the pulls holding it. */
export class Leases {
  private readonly counts = new Map<string, number>();

  /** Holds every key until the returned release is called (once; later calls do nothing). */
  hold(keys: string[]): () => void {
    for (const k of keys) this.counts.set(k, (this.counts.get(k) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const k of keys) {
        const n = (this.counts.get(k) ?? 1) - 1;
        if (n <= 0) this.counts.delete(k);
        else this.counts.set(k, n);
      }
    };
  }

  has(key: string): boolean {
    return this.counts.has(key);
  }
}
