/**
 * A record field holding a JSON document that most readers never look at (the request as
 * kubelet sent it: only verbose status, checkpoints and recovery read it), parsed on
 * first read instead of on every row read. The status and list RPCs kubelet's PLEG makes
 * every second for every pod and container read rows without it.
 */
export function lazyJsonField<T extends object, K extends string, V>(obj: T, key: K, text: string): T & Record<K, V> {
  let value: V | undefined;
  let parsed = false;
  return Object.defineProperty(obj, key, {
    enumerable: true,
    configurable: true,
    get(): V {
      if (!parsed) {
        value = JSON.parse(text) as V;
        parsed = true;
      }
      return value!;
    },
    set(v: V) {
      value = v;
      parsed = true;
    },
  }) as T & Record<K, V>;
}

/** Freezes a parsed JSON document and everything in it. */
function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

/**
 * Parsed JSON documents of rows, by row id, reused while the row holds the same text: the
 * status and list RPCs that kubelet's PLEG makes every second for every pod and container
 * read the same facts again and again, and parsing them was most of such a call's work.
 * The text is compared on every read, so a row changed by anyone (another process, a
 * migration) is parsed afresh. The documents are shared between the records handed out,
 * so they are frozen: a change is a new document written through the repository.
 */
export class ParsedJsonCache<V> {
  private readonly byId = new Map<string, { text: string; value: V }>();

  constructor(
    private readonly parse: (id: string, text: string) => V,
    /** Entries kept at most; all are dropped when it is reached (rows deleted behind the repository's back). */
    private readonly max = 4096,
  ) {}

  get(id: string, text: string): V {
    const hit = this.byId.get(id);
    if (hit !== undefined && hit.text === text) return hit.value;
    const value = deepFreeze(this.parse(id, text));
    if (hit === undefined && this.byId.size >= this.max) this.byId.clear();
    this.byId.set(id, { text, value });
    return value;
  }

  /** Forgets a deleted row's document. */
  delete(id: string): void {
    this.byId.delete(id);
  }
}
