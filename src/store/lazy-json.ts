/**
 * A record field holding a JSON document that most readers never look at (the request as
 * kubelet sent it: only verbose status, checkpoints and recovery read it), parsed on
 * first read instead of on every row read. The status and list RPCs kubelet's PLEG makes
 * every second for every pod and container read rows without it. `text` is the document,
 * or a function that reads it (from its row) when first wanted.
 */
export function lazyJsonField<T extends object, K extends string, V>(obj: T, key: K, text: string | (() => string)): T & Record<K, V> {
  let value: V | undefined;
  let parsed = false;
  return Object.defineProperty(obj, key, {
    enumerable: true,
    configurable: true,
    get(): V {
      if (!parsed) {
        value = JSON.parse(typeof text === 'string' ? text : text()) as V;
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

/**
 * `{ ...rec, ...change }` without reading `rec`'s lazy fields ({@link lazyJsonField}): a
 * spread calls their getters, i.e. reads and parses the documents on every state change.
 * The copy keeps them lazy; the keys of `change` become plain fields.
 */
export function withChanges<T extends object>(rec: T, change: Partial<T>): T {
  const next = Object.defineProperties({}, Object.getOwnPropertyDescriptors(rec)) as T;
  for (const [key, value] of Object.entries(change)) {
    Object.defineProperty(next, key, { value: value as unknown, writable: true, enumerable: true, configurable: true });
  }
  return next;
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
 * The column a repository adds to the rows it reads for {@link RowDocuments}: the
 * connection's `PRAGMA data_version`, read in the same statement (so in the same read
 * transaction, and without a statement of its own: in WAL mode each one takes the
 * shared-memory read lock).
 */
export const DATA_VERSION_COLUMN = '(SELECT data_version FROM pragma_data_version) AS data_version';

/**
 * A JSON document of each row of a table (a container's or pod's facts), read from the
 * database and parsed once, then kept: the status and list RPCs that kubelet's PLEG makes
 * every second for every pod and container would otherwise read and parse the same
 * kilobytes again and again (most of such a call's work, and of the garbage it leaves).
 *
 * It stays true because the owning repository, through which this connection writes the
 * column, calls {@link forget} for each row it writes or deletes, and because a commit of
 * any other connection (a `berthd doctor --repair`) changes `PRAGMA data_version`, read
 * with each row ({@link DATA_VERSION_COLUMN}), which empties the cache. The documents are
 * shared between the records handed out, so they are frozen: a change is a new document
 * written through the repository.
 */
export class RowDocuments<V> {
  private readonly byId = new Map<string, V>();
  private version: number | undefined;

  constructor(
    /**
     * The connection the rows are read through: nothing read inside one of its
     * transactions is kept, since a rollback would leave a document never committed.
     */
    private readonly db: { readonly inTransaction: boolean },
    /** The document's text, read from its row; undefined when there is no such row. */
    private readonly read: (id: string) => string | undefined,
    private readonly parse: (id: string, text: string) => V,
    /** Documents kept at most; all are dropped when it is reached. */
    private readonly max = 4096,
  ) {}

  /** The document of the row `id`, read with `dataVersion` ({@link DATA_VERSION_COLUMN}); undefined when the row is gone. */
  get(id: string, dataVersion: number): V | undefined {
    if (dataVersion !== this.version) {
      this.byId.clear();
      this.version = dataVersion;
    }
    const hit = this.byId.get(id);
    if (hit !== undefined) return hit;
    const text = this.read(id);
    if (text === undefined) return undefined;
    const value = deepFreeze(this.parse(id, text));
    if (this.db.inTransaction) return value;
    if (this.byId.size >= this.max) this.byId.clear();
    this.byId.set(id, value);
    return value;
  }

  /** A write of this connection changed or deleted the row (called inside the write's transaction). */
  forget(id: string): void {
    this.byId.delete(id);
  }
}
