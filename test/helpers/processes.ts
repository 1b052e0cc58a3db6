/**
 * Processes a test kills on purpose (a shim, a container's init): whether one is gone, and
 * a SIGKILL that waits until it is.
 */
import { readFileSync } from 'node:fs';
import { until } from './berthd.js';

/** Whether a process is gone (or a zombie nobody reaped yet). */
export function gone(pid: number): boolean {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return st.slice(st.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/** SIGKILLs `pid` and waits (up to 5 s) until it is gone. */
export async function killAndWait(pid: number): Promise<void> {
  process.kill(pid, 'SIGKILL');
  await until(async () => (gone(pid) ? true : undefined), 5000);
}
