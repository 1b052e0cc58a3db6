/**
 * Pinned pod namespaces: how a sandbox without an infra container keeps its network,
 * IPC and UTS namespaces alive (CRI-O's "drop infra" mode).
 *
 * A namespace lives as long as something refers to it: a process in it, an open fd, or
 * a bind mount of its nsfs file. berth pins each pod namespace by bind-mounting it on an
 * empty file, `<dir>/net`, `<dir>/ipc`, `<dir>/uts`, without a process spawn: the addon's
 * pinNamespaces clones a helper (CLONE_VM, on libuv's pool) into new namespaces of those
 * kinds, which sets the hostname in the new UTS namespace; the pool thread binds
 * `/proc/<helper>/ns/<kind>` on each file, then kills and reaps the helper. (This was
 * `unshare --net=<dir>/net --ipc=<dir>/ipc --uts=<dir>/uts hostname <name>`: a fork and
 * two execs, some 9 ms of RunPodSandbox.) The mount namespace is not unshared, so the
 * binds land in berthd's own mount namespace: they outlive the helper and berthd itself. Containers
 * then join a namespace by path (`runc` spec `namespaces[].path`), and the kernel frees
 * it once the pin is unmounted and the last process in it has exited.
 *
 * Mount propagation (checked on this kind of machine, Linux 6.18, where every mount is
 * private because no systemd runs; under systemd / is shared):
 * - A bind of a net/ipc/uts nsfs file works on a private and on a shared mount alike.
 *   Only mount-namespace files are refused on a shared mount (EINVAL, against reference
 *   loops); berth never pins a mount namespace.
 * - A mount namespace created while a pin exists (`unshare -m`, a systemd unit with
 *   PrivateTmp, runc before it pivots) holds its own copy of the pin. Under a private
 *   parent, `umount` on the host leaves that copy, and with it the namespace, alive;
 *   under a shared parent the unmount propagates to peers and slaves. Either way,
 *   deleting the pin file detaches every copy in every mount namespace (the kernel does
 *   so for unlinked mount points since 3.18, even for copies in another user namespace).
 *   So removal is unmount *and* unlink, and no shared mount is needed; a crash between
 *   the two leaves a file that recovery's removal deletes.
 * - berthd must run in the host's mount namespace (no PrivateTmp/ProtectSystem/
 *   PrivateMounts in its unit, and in a container only with /run mounted `rshared`),
 *   or the pins live and die with that private namespace.
 */
import { constants, lstatSync, statfsSync } from 'node:fs';
import { chmod, lstat, mkdir, open, rmdir, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { throwIfAborted } from '../common/abort.js';
import { BerthError, errnoOf, invalidArgument, messageOf } from '../common/errors.js';
import { DisposableStack } from '../common/disposable.js';
import { settleAll } from '../common/settle-all.js';
import { canonicalPath, isMountPoint, isMountPointAsync, mount, mountPointsAsync, MNT, MS, umount } from '../common/mount.js';
import { native } from '../common/native.js';

export type PodNamespace = 'net' | 'ipc' | 'uts';

/** Paths of the bind-mounted namespace files of one pod. */
export interface PinnedNamespaces {
  net?: string;
  ipc?: string;
  uts?: string;
}

export const POD_NAMESPACES: readonly PodNamespace[] = ['net', 'ipc', 'uts'];

/** The pins a pod's dir may hold: the namespaces berth creates, the infra's PID namespace, and a pod user namespace (userns.ts). */
const PIN_FILES: readonly string[] = [...POD_NAMESPACES, 'pid', 'user'];

/** The filesystem magic of nsfs (`NSFS_MAGIC` in linux/magic.h). */
const NSFS_MAGIC = 0x6e736673;

/** Unmount attempts per path: pins are never stacked, but a crash might have done it. */
const MAX_UNMOUNTS = 8;

/**
 * True if `path` is currently a mount point holding a namespace: a non-symlink whose
 * filesystem is nsfs. No ordinary file lives on nsfs, so a path that reports it must be
 * a bind of a namespace file (the /proc/<pid>/ns links are symlinks and are refused).
 */
export function isPinned(path: string): boolean {
  try {
    if (lstatSync(path).isSymbolicLink()) return false;
    return statfsSync(path).type === NSFS_MAGIC;
  } catch {
    return false;
  }
}

/**
 * Unmounts (MNT_DETACH) everything stacked on the given paths: each round unmounts, side
 * by side, the paths that exist (a cheap lstat) or, after the first round, that mountinfo
 * still lists (stacked pins: only after a crash), then reads mountinfo once, on the pool
 * (it grows with every mount on the node). Never through a symlink, which would
 * detach its target (UMOUNT_NOFOLLOW, and symlinks are skipped).
 */
async function detachAll(paths: string[], what: string): Promise<void> {
  let todo = paths.filter((p) => isPlainEntry(p));
  for (let round = 0; round < MAX_UNMOUNTS && todo.length > 0; round++) {
    await settleAll(
      todo.map(async (path) => {
        try {
          await umount(path, MNT.DETACH | MNT.NOFOLLOW);
        } catch (err) {
          const errno = errnoOf(err);
          // EINVAL: no mount point; ENOENT: gone. Anything else counts only if it is still mounted.
          if (errno !== 'EINVAL' && errno !== 'ENOENT' && isMountPoint(path)) {
            throw new BerthError('Internal', `${what}: unmounting ${path} failed: ${messageOf(err)}`, { cause: err });
          }
        }
      }),
    );
    const points = await mountPointsAsync();
    todo = todo.filter((p) => isPlainEntry(p) && points.has(canonicalPath(p)));
  }
  if (todo.length > 0) throw new BerthError('Internal', `${what}: still mounted after ${MAX_UNMOUNTS} unmounts: ${todo.join(' ')}`);
}

/** Whether `path` exists and is no symlink. */
function isPlainEntry(path: string): boolean {
  try {
    return !lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

/** Removes a file; a missing one is fine. */
async function unlinkIfPresent(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw err;
  }
}

/**
 * Creates new namespaces of the given kinds and pins each by bind mount at
 * `<dir>/<kind>` (dir created with mode 0700). Sets the hostname inside the new UTS
 * namespace when given (the caller validates it; the kernel refuses one over 64 bytes,
 * and everything is then undone). With `loopback`, `lo` of the new network namespace is
 * brought up too, as the CNI loopback plugin would (a process of some ms per pod, spared).
 * No process spawn (the addon's pinNamespaces). On any failure,
 * undoes what it made: unmounts the pins, removes the files, and the dir if it made it.
 * A pin that already exists and is mounted is never stacked on: AlreadyExists.
 */
export async function createPinnedNamespaces(
  dir: string,
  kinds: PodNamespace[],
  opts: { hostname?: string; loopback?: boolean; signal?: AbortSignal } = {},
): Promise<PinnedNamespaces> {
  const wanted = POD_NAMESPACES.filter((k) => kinds.includes(k));
  const unknown = kinds.filter((k) => !POD_NAMESPACES.includes(k));
  if (unknown.length > 0) throw invalidArgument(`pod namespaces: unknown kind(s) ${unknown.join(', ')} (known: ${POD_NAMESPACES.join(', ')})`);
  if (wanted.length === 0) throw invalidArgument('pod namespaces: no namespace kind to create');
  const { hostname, signal } = opts;
  const loopback = opts.loopback === true;
  if (loopback && !wanted.includes('net')) throw invalidArgument('pod namespaces: bringing lo up needs a new network namespace');
  if (hostname !== undefined && !wanted.includes('uts')) {
    // Without a new UTS namespace, `hostname` would rename the node.
    throw invalidArgument(`pod namespaces: a hostname (${hostname}) needs a new UTS namespace`);
  }
  if (hostname !== undefined && (hostname === '' || hostname.startsWith('-'))) {
    throw invalidArgument(`pod namespaces: invalid hostname ${JSON.stringify(hostname)}`);
  }
  throwIfAborted(signal, `pod namespaces in ${dir}`);

  const pins: PinnedNamespaces = {};
  for (const kind of wanted) pins[kind] = join(dir, kind);
  const paths = wanted.map((k) => join(dir, k));

  const stack = new DisposableStack();
  try {
    await mkdir(dirname(resolve(dir)), { recursive: true });
    let madeDir = true;
    try {
      await mkdir(dir, { mode: 0o700 });
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
      madeDir = false;
      if (!(await lstat(dir)).isDirectory()) throw new BerthError('FailedPrecondition', `pod namespaces: ${dir} exists and is not a directory`);
    }
    if (madeDir) stack.defer(() => rmdir(dir));
    await chmod(dir, 0o700);

    // Nothing can be mounted in a dir made just now: mountinfo is read only for one that was there.
    const points = madeDir ? undefined : await mountPointsAsync();
    for (const path of paths) {
      if (isPinned(path) || points?.has(canonicalPath(path))) {
        throw new BerthError('AlreadyExists', `pod namespaces: ${path} is already a mount point; remove the old pins first`);
      }
    }
    // Undo in any case: the pins and their files, whatever exists of them.
    stack.defer(async () => {
      await detachAll(paths, `pod namespaces in ${dir}`);
      for (const path of paths) await unlinkIfPresent(path);
    });
    for (const path of paths) {
      // O_NOFOLLOW: a planted symlink must not make root create or open a file elsewhere.
      const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o444);
      await fh.close();
    }

    try {
      await native().pinNamespaces(pins.net ?? null, pins.ipc ?? null, pins.uts ?? null, hostname ?? null, loopback);
    } catch (err) {
      throw new BerthError('Internal', `pod namespaces in ${dir}: pinning ${wanted.join(', ')} failed: ${messageOf(err)}`, { cause: err });
    }
    const missing = paths.filter((p) => !isPinned(p));
    if (missing.length > 0) {
      throw new BerthError('Internal', `pod namespaces in ${dir}: pinning succeeded but ${missing.join(', ')} is not pinned`);
    }
    // Cancelled while the pins were made: they were left to finish, and now everything is undone.
    throwIfAborted(signal, `pod namespaces in ${dir}`);
    stack.move();
    return pins;
  } catch (err) {
    try {
      await stack.dispose();
    } catch (undoErr) {
      throw new BerthError(errorKindOf(err), `${messageOf(err)}; and undoing it failed, leftovers in ${dir}: ${messageOf(undoErr)}`, { cause: err });
    }
    if (err instanceof BerthError) throw err;
    throw new BerthError('Internal', `pod namespaces in ${dir}: ${messageOf(err)}`, { cause: err });
  }
}

function errorKindOf(err: unknown): BerthError['kind'] {
  return err instanceof BerthError ? err.kind : 'Internal';
}

/**
 * Pins the PID namespace of a running process (a pod's infra process) at `<dir>/pid`
 * (dir created with mode 0700 when missing), so containers join it by a path that can
 * never come to mean another process's namespace once pids are reused. A PID namespace
 * takes no new process after its PID 1 has exited: the pin then only keeps the dead
 * namespace's file, until removePinnedNamespaces. Undoes itself on failure.
 */
export async function pinPidNamespace(dir: string, pid: number): Promise<string> {
  const path = join(dir, 'pid');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  if (isPinned(path) || (await isMountPointAsync(path)))
    throw new BerthError('AlreadyExists', `pod namespaces: ${path} is already a mount point; remove the old pins first`);
  const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o444);
  await fh.close();
  let failure: string | undefined;
  try {
    await mount(`/proc/${pid}/ns/pid`, path, '', MS.BIND);
    if (!isPinned(path)) failure = 'the mount holds no namespace';
  } catch (err) {
    failure = messageOf(err);
  }
  if (failure !== undefined) {
    await detachAll([path], `pod namespaces in ${dir}`);
    await unlinkIfPresent(path);
    throw new BerthError('Internal', `pinning the PID namespace of process ${pid} at ${path} failed: ${failure}`);
  }
  return path;
}

/**
 * Unmounts (MNT_DETACH) everything stacked on one pin file and deletes it, for a pin
 * made outside berth's own layout (`ip netns add` style, a file rather than a pod's
 * dir). Idempotent.
 */
export async function removePin(path: string): Promise<void> {
  await detachAll([path], `namespace pin ${path}`);
  await unlinkIfPresent(path);
}

/**
 * Unmounts (MNT_DETACH) and deletes each pin of `dir`, then the dir. Idempotent: a
 * missing dir or file, or a pin that is not mounted, is fine. Only the pin files are
 * removed; anything else in the dir makes the rmdir fail, loudly, rather than vanish.
 */
export async function removePinnedNamespaces(dir: string): Promise<void> {
  const paths = PIN_FILES.map((k) => join(dir, k));
  try {
    await detachAll(paths, `pod namespaces in ${dir}`);
    await settleAll(paths.map(unlinkIfPresent));
    await rmdir(dir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return;
    if (err instanceof BerthError) throw err;
    throw new BerthError('Internal', `removing pod namespaces in ${dir}: ${messageOf(err)}`, { cause: err });
  }
}
