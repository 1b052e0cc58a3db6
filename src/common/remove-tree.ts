/**
 * Removing a directory tree, `rm -rf` (a missing path is fine): a container's writable
 * layer, its bundle and shim files, a pod's dir. The addon's removeTree does it as one
 * job on libuv's pool; Node's fs.rm({recursive}) queues every lstat, readdir, unlink and
 * rmdir as a job of its own, so a pod of two containers took some 60 round trips of the
 * pool (and of the event loop) at RemovePodSandbox. A mount inside the tree (a bind
 * mount of the same filesystem included), or the tree's top being one, stops the removal
 * with FailedPrecondition: removing through it would delete what the mount shows, which
 * is not the tree's. Where the addon cannot finish otherwise (a tree deeper than it
 * follows; any other error), fs.rm does the job and reports its own error.
 */
import { rm } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { BerthError, errnoOf } from './errors.js';
import { native } from './native.js';

export async function removeTree(path: string): Promise<void> {
  try {
    await native().removeTree(isAbsolute(path) ? path : resolve(path));
  } catch (err) {
    if (errnoOf(err) === 'EXDEV') {
      throw new BerthError('FailedPrecondition', `${path}: a mount is left inside it (or it is one); berth does not remove files through a mount`, {
        cause: err,
      });
    }
    await rm(path, { recursive: true, force: true });
  }
}
