/**
 * One operation at a time per key (a pod, a container); different keys run freely.
 * An operation that fails does not poison the next one on the same key.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<unknown>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.catch(() => undefined).then(fn);
    this.tails.set(key, next);
    try {
      return await next;
    } finally {
      if (this.tails.get(key) === next) this.tails.delete(key);
    }
  }
}

/**
 * Resolves a full id or a unique prefix of at least 3 hex digits (as crictl users type
 * them) to a record; undefined when unknown or ambiguous.
 */
export function findByIdOrPrefix<T>(idOrPrefix: string, get: (id: string) => T | undefined, idsWithPrefix: (prefix: string) => string[]): T | undefined {
  const exact = get(idOrPrefix);
  if (exact) return exact;
  if (idOrPrefix.length < 3 || !/^[a-f0-9]+$/.test(idOrPrefix)) return undefined;
  const ids = idsWithPrefix(idOrPrefix);
  return ids.length === 1 ? get(ids[0]!) : undefined;
}
