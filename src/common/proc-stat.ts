/**
 * A process's start time from /proc, which tells a process from a later one that reuses
 * its pid, and dates a process berth did not see start.
 */
import { readFileSync } from 'node:fs';

/** The kernel's USER_HZ: the unit of /proc's clock-tick fields (100 on every Linux ABI). */
const CLOCK_TICKS = 100n;

/**
 * Field 22 of /proc/<pid>/stat: when the process started, in clock ticks after boot;
 * undefined when there is no such process (or it is a zombie, whose pid is as good as free).
 */
export function processStartTicks(pid: number): bigint | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) may hold spaces and parentheses: fields are counted after its last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (rest[0] === 'Z' || rest[0] === 'X') return undefined;
  const ticks = rest[22 - 3];
  return ticks !== undefined && /^\d+$/.test(ticks) ? BigInt(ticks) : undefined;
}

let bootNs: bigint | undefined;

/** When the process started, in nanoseconds since the epoch; undefined when it is gone. */
export function processStartNs(pid: number): bigint | undefined {
  const ticks = processStartTicks(pid);
  if (ticks === undefined) return undefined;
  if (bootNs === undefined) {
    const btime = /^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1];
    if (btime === undefined) return undefined;
    bootNs = BigInt(btime) * 1_000_000_000n;
  }
  return bootNs + (ticks * 1_000_000_000n) / CLOCK_TICKS;
}
