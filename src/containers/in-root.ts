/**
 * Resolving a path of an image or a container's rootfs as the container will see it:
 * `root` taken as `/` (openat2's RESOLVE_IN_ROOT), so that an absolute symlink restarts
 * at `root` and `..` stops there. berthd is host root: a path of the image must never
 * lead it to a host file.
 */
import type { Stats } from 'node:fs';
import { lstat, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoOf } from '../common/errors.js';

/** Symlinks followed while resolving, as the kernel's MAXSYMLINKS. */
export const MAX_LINKS = 40;

export type InRoot =
  /** `path` under root, and its lstat (never a symlink). */
  | { found: true; path: string; stats: Stats }
  /** `missing`: a component does not exist; `notDirectory`: `name` is on the way but no directory; `loop`: more than MAX_LINKS symlinks. */
  | { found: false; why: 'missing' | 'notDirectory' | 'loop'; name: string };

/** Walks `sub` inside `root` one component at a time with lstat; errors other than ENOENT and ENOTDIR are thrown. */
export async function walkInRoot(root: string, sub: string): Promise<InRoot> {
  const parts = (p: string): string[] => p.split('/').filter((s) => s !== '' && s !== '.');
  const todo = parts(sub);
  const done: string[] = [];
  let links = 0;
  let stats = await lstat(root);
  while (todo.length > 0) {
    const name = todo.shift()!;
    if (name === '..') {
      done.pop();
      continue;
    }
    const path = join(root, ...done, name);
    try {
      stats = await lstat(path);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENOTDIR') return { found: false, why: 'missing', name };
      throw err;
    }
    if (stats.isSymbolicLink()) {
      if (++links > MAX_LINKS) return { found: false, why: 'loop', name };
      const target = await readlink(path);
      if (target.startsWith('/')) done.length = 0;
      todo.unshift(...parts(target));
      continue;
    }
    if (todo.length > 0 && !stats.isDirectory()) return { found: false, why: 'notDirectory', name };
    done.push(name);
  }
  // `..` back to the root, or an empty path: the root itself.
  if (done.length === 0) stats = await lstat(root);
  return { found: true, path: join(root, ...done), stats };
}
