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
