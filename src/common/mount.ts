/**
 * Mounts: mount(2) and umount2(2) through berthd's native addon, on the thread pool,
 * rather than a `mount`/`umount` process per call; {@link cloneMount} for the binds runc
 * 1.1 cannot make (idmapped, recursively read-only); and what is mounted, from
 * /proc/self/mountinfo.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { BerthError } from './errors.js';
import { native } from './native.js';
import { traced } from './trace-points.js';

/** mount(2) flags berth uses. */
export const MS = { RDONLY: 1, NOSUID: 2, NODEV: 4, NOEXEC: 8, REMOUNT: 32, BIND: 4096, REC: 16384, PRIVATE: 1 << 18 } as const;
/** umount2(2) flags. */
export const MNT = { FORCE: 1, DETACH: 2, NOFOLLOW: 8 } as const;

/**
 * The most bytes of options mount(2) takes: one page (the smallest, 4 KiB) less its NUL.
 * The kernel reads one page and silently cuts what is longer, so an overlay with too
 * many lowerdirs would lose its last layers and its upperdir without an error.
 */
export const MAX_MOUNT_DATA = 4095;

/**
 * mount(2). Rejects with a Node-style errno error (`code`: 'ENOENT', 'EINVAL'…), or with
 * FailedPrecondition when `data` is longer than {@link MAX_MOUNT_DATA}.
 */
export function mount(source: string, target: string, fstype: string, flags: number, data = ''): Promise<void> {
  const bytes = Buffer.byteLength(data);
  if (bytes > MAX_MOUNT_DATA) {
    return Promise.reject(
      new BerthError('FailedPrecondition', `mounting ${fstype} on ${target}: its options are ${bytes} bytes, over the ${MAX_MOUNT_DATA} mount(2) takes`),
    );
  }
  return traced('berth:mount', { op: 'mount', target }, () => native().mount(source, target, fstype, flags, data));
}

/** umount2(2). Rejects with a Node-style errno error ('EINVAL' when `target` is not a mount point). */
export function umount(target: string, flags = 0): Promise<void> {
  return traced('berth:mount', { op: 'umount', target }, () => native().umount(target, flags));
}

export interface CloneMountOptions {
  /** The whole tree under `source` (AT_RECURSIVE), with every attribute set on each of its mounts. */
  recursive?: boolean;
  /** Read-only (MOUNT_ATTR_RDONLY): with `recursive`, on every submount too. */
  readonly?: boolean;
  /** Idmapped (MOUNT_ATTR_IDMAP) through the user namespace pinned or living at this path. */
  usernsPath?: string;
}

/**
 * A bind of `source` onto `target` made with open_tree(OPEN_TREE_CLONE), mount_setattr
 * and move_mount: the attributes are set on the detached copy before it is attached, so
 * it never exists without them. Rejects with a Node-style errno error whose `syscall` says
 * which step failed (EINVAL from mount_setattr: the filesystem cannot be idmapped).
 */
export function cloneMount(source: string, target: string, opts: CloneMountOptions = {}): Promise<void> {
  return native().cloneMount(source, target, opts.recursive ?? false, opts.readonly ?? false, opts.usernsPath ?? null);
}

/** Undoes the octal escapes (`\040` for a space…) of a /proc/self/mountinfo path field. */
export function unescapeMountPath(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/**
 * The absolute path as the kernel writes it in mountinfo: symlinks in the parent
 * resolved (e.g. /var/run → /run), the last component kept as is.
 */
export function canonicalPath(path: string): string {
  const abs = resolve(path);
  try {
    return join(realpathSync(dirname(abs)), basename(abs));
  } catch {
    return abs;
  }
}

/** The mount points of berthd's mount namespace, from /proc/self/mountinfo. */
export function mountPoints(): string[] {
  return parseMountPoints(readFileSync('/proc/self/mountinfo', 'utf8'));
}

/** The mount points (field 5, unescaped) of a mountinfo text. */
function parseMountPoints(text: string): string[] {
  const points: string[] = [];
  for (const line of text.split('\n')) {
    const field = line.split(' ')[4];
    if (field !== undefined) points.push(unescapeMountPath(field));
  }
  return points;
}

/** True if `path` is a mount point in berthd's mount namespace. */
export function isMountPoint(path: string): boolean {
  const target = canonicalPath(path);
  return mountPoints().includes(target);
}

/**
 * {@link mountPoints}, read on libuv's pool: mountinfo grows with every mount on the node
 * (each pod's pins and shm, each container's rootfs), and a synchronous read of it stops
 * the event loop for as long.
 */
export async function mountPointsAsync(): Promise<Set<string>> {
  return new Set(parseMountPoints(await readFile('/proc/self/mountinfo', 'utf8')));
}

/** {@link isMountPoint}, with mountinfo read on libuv's pool. */
export async function isMountPointAsync(path: string): Promise<boolean> {
  return (await mountPointsAsync()).has(canonicalPath(path));
}
