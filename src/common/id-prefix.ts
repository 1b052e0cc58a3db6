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
