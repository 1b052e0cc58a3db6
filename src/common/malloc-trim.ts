/**
 * Handing freed malloc memory back to the kernel.
 *
 * glibc keeps what it frees for reuse, in the main heap and in one arena per thread that
 * allocated (libuv's pool threads do fs, zlib, hashing and the addon's mount calls).
 * Measured over a churn of 100 pods with 2 containers each, berthd's RSS went from 80 to
 * 128 MiB with no growth of its JavaScript heap; malloc_trim(0) took it back to 86 MiB.
 * So berthd trims periodically, and after bursts that it knows of (the unpack workers'
 * exit after a pull).
 */
import { native } from './native.js';

/** malloc_trim(0); false when nothing went back (or there is no addon to call it with). */
export function trimMalloc(): boolean {
  try {
    return native().mallocTrim();
  } catch {
    return false;
  }
}

/** Trims every `everyMs` while the process runs, without keeping it alive; the returned function stops it. */
export function startMallocTrimmer(everyMs: number): () => void {
  const timer = setInterval(trimMalloc, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
