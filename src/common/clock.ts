/**
 * berthd's one clock: wall-clock time in nanoseconds since the Unix epoch, as CRI
 * timestamps carry it and the database stores it (a decimal string: it exceeds 2^53).
 *
 * Date.now() has millisecond resolution, so the monotonic clock, anchored once to the
 * wall clock, gives the nanoseconds; differences between two readings are then exact,
 * as CPU rates need. Both clocks are slewed alike by NTP; when the wall clock is
 * stepped, the anchor is taken again, so a reading never lies in a later millisecond
 * than Date.now() reports, nor more than one millisecond before it.
 */

let offset: bigint | undefined;

/** Now, in nanoseconds since the epoch. */
export function nowNsBigint(): bigint {
  const hr = process.hrtime.bigint();
  const wallNs = BigInt(Date.now()) * 1_000_000n;
  const t = offset === undefined ? undefined : offset + hr;
  if (t !== undefined && t >= wallNs - 1_000_000n && t < wallNs + 1_000_000n) return t;
  offset = wallNs - hr;
  return wallNs;
}

/** Now, in nanoseconds since the epoch, as a decimal string (CRI timestamps, database columns). */
export function nowNs(): string {
  return String(nowNsBigint());
}
