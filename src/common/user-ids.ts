/**
 * The one reading of a user or group as an image's USER (or a CRI name field) gives it:
 * all digits is a numeric id, whatever its size, and never a name. ImageStatus (the uid
 * kubelet checks runAsNonRoot against) and CreateContainer (the uid the process gets)
 * both read it here, so they cannot disagree: an image USER "4294967296" must not pass
 * the check as a non-zero uid and then run as the passwd NAME "4294967296" with uid 0.
 */

/** The largest uid or gid berth accepts (uid_t is 32 bits). */
export const MAX_ID = 0xffffffff;

/** A user or group part: a numeric id, a name to look up, or all digits but above {@link MAX_ID}. */
export type IdRef = { kind: 'id'; id: number } | { kind: 'name'; name: string } | { kind: 'too-big'; text: string };

/** Reads one user or group part (already trimmed by the caller when it wants). */
export function parseIdRef(s: string): IdRef {
  if (!/^\d+$/.test(s)) return { kind: 'name', name: s };
  const n = Number(s);
  return n <= MAX_ID ? { kind: 'id', id: n } : { kind: 'too-big', text: s };
}

/** A numeric id field (of passwd, group): undefined unless all digits and at most {@link MAX_ID}. */
export function parseNumericId(s: string): number | undefined {
  const r = parseIdRef(s);
  return r.kind === 'id' ? r.id : undefined;
}

/** An image USER split as "user[:group]", the user part trimmed as runc does with the whole string. */
export interface ImageUserSpec {
  /** Undefined when USER is empty (root). */
  user?: IdRef;
  /** Undefined without a ":". */
  group?: IdRef;
}

export function parseImageUser(user: string): ImageUserSpec {
  const spec = user.trim();
  if (spec === '') return {};
  const colon = spec.indexOf(':');
  const userPart = colon < 0 ? spec : spec.slice(0, colon);
  return {
    user: parseIdRef(userPart),
    ...(colon < 0 ? {} : { group: parseIdRef(spec.slice(colon + 1)) }),
  };
}
