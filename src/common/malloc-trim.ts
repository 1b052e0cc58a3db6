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

/**
 * Caps glibc's malloc arenas at `n` (M_ARENA_MAX), unless the environment already says
 * how many (MALLOC_ARENA_MAX, which glibc reads itself at start-up). glibc's default is
 * 8 per core: each libuv pool thread and each unpack worker gets an arena of its own,
 * and what a burst frees there stays as fragments that malloc_trim cannot hand back.
 * Measured on this 2-core machine, berthd's RSS 60 s after three cold pulls of a 168 MB
 * image: +9.8 MiB over idle with the default, +3.4 MiB with 2 arenas (the main one, and
 * one that every other thread shares), for the same CPU per pulled MB. Returns whether
 * the cap was set here.
 */
export function limitMallocArenas(n: number, env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.MALLOC_ARENA_MAX) return false;
  try {
    return native().limitArenas(n);
  } catch {
    return false;
  }
}

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
