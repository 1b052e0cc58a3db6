/**
 * Removing a directory tree, `rm -rf` (a missing path is fine): a container's writable
 * layer, its bundle and shim files, a pod's dir. The addon's removeTree does it as one
 * job on libuv's pool; Node's fs.rm({recursive}) queues every lstat, readdir, unlink and
 * rmdir as a job of its own, so a pod of two containers took some 60 round trips of the
 * pool (and of the event loop) at RemovePodSandbox. Where the addon cannot finish (a
 * mount inside the tree: it never enters another filesystem; a tree deeper than it
 * follows; any other error), fs.rm does the job as before and reports its own error.
 */
import { rm } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { native } from './native.js';

export async function removeTree(path: string): Promise<void> {
  try {
    await native().removeTree(isAbsolute(path) ? path : resolve(path));
  } catch {
    await rm(path, { recursive: true, force: true });
  }
}
