/**
 * Learning that a process exits without being its parent, through a pidfd (pidfd_open,
 * Linux 5.3) watched by the event loop (the addon's watchExit): nothing is read or polled
 * while the process runs, and the exit is known as it happens. The exit monitor follows
 * each container's shim this way.
 *
 * A pid names a process only while it lives: once it is gone, the kernel may hand the pid
 * to a new process. A pidfd, though, names the process that had the pid when it was
 * opened, for good. So a caller opens the watch first, then checks that the process at
 * the pid is the one it means (its start time, its command line): if it is, the watch is
 * on it, since a process keeps its pid for as long as it lives.
 *
 * Where pidfds are missing (an older kernel, a seccomp filter), or with
 * BERTH_DISABLE_PIDFD=1 in the environment (to exercise the other way), watchExit says so,
 * and the caller checks /proc itself from time to time.
 */
import { constants } from 'node:os';
import { native } from './native.js';

/** An open watch; `close` releases its descriptor (idempotent; done by itself after the exit). */
export interface ExitWatch {
  close(): void;
}

let usable = process.env.BERTH_DISABLE_PIDFD !== '1';

/**
 * Watches process `pid`: `onExit` runs once, when it exits (its descriptor is then closed).
 * 'gone' when there is no such process now; undefined when pidfds cannot be used here.
 */
export function watchExit(pid: number, onExit: () => void): ExitWatch | 'gone' | undefined {
  if (!usable || !Number.isSafeInteger(pid) || pid <= 0) return undefined;
  let closed = false;
  const handle = native().watchExit(pid, () => {
    closed = true;
    onExit();
  });
  if (typeof handle === 'number') {
    if (handle === constants.errno.ESRCH) return 'gone';
    // ENOSYS (before 5.3), EPERM (a seccomp filter), EINVAL…: the same everywhere from now on.
    if (handle === constants.errno.ENOSYS || handle === constants.errno.EPERM) usable = false;
    return undefined;
  }
  return {
    close() {
      if (closed) return;
      closed = true;
      native().unwatchExit(handle);
    },
  };
}
