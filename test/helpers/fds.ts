/** Leak checks on this process's file descriptors. */
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';

/** This process's open descriptors and what they are (`N -> target`). */
export function openFdTargets(): string[] {
  return readdirSync('/proc/self/fd').flatMap((fd) => {
    try {
      return [`${fd} -> ${readlinkSync(`/proc/self/fd/${fd}`)}`];
    } catch {
      return []; // the directory's own descriptor, closed by now
    }
  });
}

/**
 * Asserts that no descriptor is open now that was not in `before` (one closed meanwhile is
 * no leak), giving a child's exit watch (a pidfd, closed just after the exit is reported) a moment.
 */
export async function assertNoNewFds(before: string[]): Promise<void> {
  const opened = (): string[] => openFdTargets().filter((fd) => !before.includes(fd));
  for (let i = 0; i < 100 && opened().length > 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(opened(), [], 'no descriptor left open');
}
