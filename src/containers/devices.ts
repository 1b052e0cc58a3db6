/**
 * Host devices for a container: the CRI `devices` (device plugins) and, for privileged
 * containers, every device node of the host's /dev.
 *
 * Resolution needs the filesystem (stat, readdir, symlinks), so it runs before spec
 * generation: {@link resolveDevices} and {@link hostDevices} turn paths into plain
 * records, and the pure {@link deviceSpec} turns those into the OCI `linux.devices` and
 * the device cgroup rules.
 *
 * What is accepted, as containerd accepts it:
 * - host_path a device node, a symlink to one (resolved; the container path stays as
 *   asked), or a directory: every device node under it, recursively, appears under the
 *   container path at the same relative path. Symlinks and other files inside a
 *   directory are skipped, and so are the pts, shm, fd, mqueue, .lxc, .lxd-mounts and
 *   .udev subdirectories.
 * - container_path any absolute path (containerd does not confine it to /dev either),
 *   but never one with ".." segments: a path that climbs is refused, not cleaned.
 * - permissions a non-empty subset of "rwm" ("" means "rwm").
 */
import type { Dirent } from 'node:fs';
import { lstat, readdir, realpath, stat } from 'node:fs/promises';
import { posix } from 'node:path';
import { errnoOf, invalidArgument, messageOf } from '../common/errors.js';
import type { OciDevice, OciDeviceCgroup } from '../oci/spec.js';

/** A device as the CRI names it (ContainerConfig.devices[i]). */
export interface CriDevice {
  container_path: string;
  host_path: string;
  permissions: string;
}

/** A host device node, stat'ed, at the path it gets in the container. */
export interface ResolvedDevice {
  /** The path in the container. */
  path: string;
  type: 'c' | 'b';
  major: number;
  minor: number;
  fileMode: number;
  uid: number;
  gid: number;
  /** The cgroup access the container gets: a subset of "rwm". */
  permissions: string;
}

/** runc's default device cgroup: deny all, mknod anything, use the standard nodes. */
export const DEFAULT_DEVICE_RULES: readonly OciDeviceCgroup[] = [
  { allow: false, access: 'rwm' },
  { allow: true, type: 'c', access: 'm' },
  { allow: true, type: 'b', access: 'm' },
  { allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' }, // /dev/null
  { allow: true, type: 'c', major: 1, minor: 5, access: 'rwm' }, // /dev/zero
  { allow: true, type: 'c', major: 1, minor: 7, access: 'rwm' }, // /dev/full
  { allow: true, type: 'c', major: 5, minor: 0, access: 'rwm' }, // /dev/tty
  { allow: true, type: 'c', major: 1, minor: 8, access: 'rwm' }, // /dev/random
  { allow: true, type: 'c', major: 1, minor: 9, access: 'rwm' }, // /dev/urandom
  { allow: true, type: 'c', major: 5, minor: 2, access: 'rwm' }, // /dev/ptmx
  { allow: true, type: 'c', major: 136, access: 'rwm' }, // /dev/pts/*
];

/** Subdirectories of a device directory that hold no devices to copy (mounts of their own, or tooling state). */
const SKIPPED_DIRS = new Set(['pts', 'shm', 'fd', 'mqueue', '.lxc', '.lxd-mounts', '.udev']);

/** Bounds on a directory walk, so a huge or looping tree cannot stall a CreateContainer. */
const MAX_DIR_DEPTH = 8;
const MAX_DIR_DEVICES = 4096;

/** "" → "rwm"; otherwise a subset of r, w and m, each at most once. Throws InvalidArgument naming `field`. */
export function checkPermissions(perms: string, field: string): string {
  const p = perms === '' ? 'rwm' : perms;
  if (!/^[rwm]{1,3}$/.test(p) || new Set(p).size !== p.length) throw invalidArgument(`${field} "${perms}" must be a combination of r, w and m`);
  return p;
}

/** An absolute container path without ".." segments, cleaned of "." and repeated slashes. */
export function checkContainerPath(p: string, field: string): string {
  if (!posix.isAbsolute(p)) throw invalidArgument(`${field} "${p}" must be an absolute path`);
  if (p.split('/').includes('..')) throw invalidArgument(`${field} "${p}" must not contain ".." segments`);
  const n = posix.normalize(p);
  return n.length > 1 ? n.replace(/\/+$/, '') : n;
}

/** Linux dev_t → major and minor (the kernel's encoding, as glibc's gnu_dev_major/minor). */
export function splitDevT(rdev: bigint): { major: number; minor: number } {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & 0xfffff000n);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & 0xffffff00n);
  return { major: Number(major), minor: Number(minor) };
}

/** The device node at `path` (not followed), or undefined when it is not a char or block device. */
async function deviceAt(path: string): Promise<Omit<ResolvedDevice, 'path' | 'permissions'> | undefined> {
  const st = await lstat(path, { bigint: true });
  const type = st.isCharacterDevice() ? 'c' : st.isBlockDevice() ? 'b' : undefined;
  if (!type) return undefined;
  return { type, ...splitDevT(st.rdev), fileMode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid) };
}

type FoundDevice = { rel: string; dev: Omit<ResolvedDevice, 'path' | 'permissions'> };

/** Every device node under `dir`, with its path relative to `dir`, in name order. */
async function devicesUnder(dir: string, rel = '', depth = 0, out: FoundDevice[] = []): Promise<FoundDevice[]> {
  if (depth > MAX_DIR_DEPTH) return out;
  let entries: Dirent[];
  try {
    entries = await readdir(posix.join(dir, rel), { withFileTypes: true });
  } catch (err) {
    // A subdirectory that went away or cannot be read holds nothing to copy.
    if (depth > 0) return out;
    throw err;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    if (out.length >= MAX_DIR_DEVICES) break;
    const sub = posix.join(rel, e.name);
    if (e.isDirectory()) {
      if (!SKIPPED_DIRS.has(e.name)) await devicesUnder(dir, sub, depth + 1, out);
    } else if (e.isCharacterDevice() || e.isBlockDevice()) {
      const dev = await deviceAt(posix.join(dir, sub)).catch(() => undefined);
      if (dev) out.push({ rel: sub, dev });
    }
  }
  return out;
}

/**
 * Resolves the CRI devices to device nodes. Throws InvalidArgument naming
 * `devices[i].<field>` for a relative or climbing container path, bad permissions, a
 * host path that does not exist, or one that is neither a device node nor a directory.
 */
export async function resolveDevices(devices: readonly CriDevice[]): Promise<ResolvedDevice[]> {
  const out: ResolvedDevice[] = [];
  for (const [i, d] of devices.entries()) {
    const field = `devices[${i}]`;
    const containerPath = checkContainerPath(d.container_path, `${field}.container_path`);
    const permissions = checkPermissions(d.permissions, `${field}.permissions`);
    if (!posix.isAbsolute(d.host_path)) throw invalidArgument(`${field}.host_path "${d.host_path}" must be an absolute path`);
    let real: string;
    try {
      real = await realpath(d.host_path);
    } catch (err) {
      const why = errnoOf(err) === 'ENOENT' ? 'does not exist' : `cannot be resolved (${messageOf(err)})`;
      throw invalidArgument(`${field}.host_path "${d.host_path}" ${why}`);
    }
    const st = await stat(real);
    if (st.isDirectory()) {
      const found = await devicesUnder(real);
      if (found.length === 0) throw invalidArgument(`${field}.host_path "${d.host_path}" is a directory with no device nodes`);
      for (const f of found) out.push({ path: posix.join(containerPath, f.rel), ...f.dev, permissions });
      continue;
    }
    const dev = await deviceAt(real);
    if (!dev) throw invalidArgument(`${field}.host_path "${d.host_path}"${real !== d.host_path ? ` (${real})` : ''} is not a device node`);
    out.push({ path: containerPath, ...dev, permissions });
  }
  return out;
}

/**
 * The host's device nodes for a privileged container: everything under `root` (/dev) as
 * containerd and CRI-O give it, less the pts, shm, fd and mqueue subtrees (the container
 * gets its own) and symlinks (/dev/stdin and friends, which runc makes itself).
 */
export async function hostDevices(root = '/dev'): Promise<ResolvedDevice[]> {
  const found = await devicesUnder(root);
  return found.map((f) => ({ path: posix.join('/dev', f.rel), ...f.dev, permissions: 'rwm' }));
}

/**
 * The OCI device nodes and device cgroup rules of a container (pure). Unprivileged: runc's
 * defaults plus one allow rule per requested device with its permissions. Privileged:
 * the host's devices (a requested device at the same container path wins) and one
 * allow-all rule.
 */
export function deviceSpec(
  requested: readonly ResolvedDevice[],
  host: readonly ResolvedDevice[] | undefined,
  privileged: boolean,
): { devices: OciDevice[]; rules: OciDeviceCgroup[] } {
  const node = (d: ResolvedDevice): OciDevice => ({ path: d.path, type: d.type, major: d.major, minor: d.minor, fileMode: d.fileMode, uid: d.uid, gid: d.gid });
  if (privileged) {
    const taken = new Set(requested.map((d) => d.path));
    const all = [...(host ?? []).filter((d) => !taken.has(d.path)), ...requested];
    return { devices: all.map(node), rules: [{ allow: true, access: 'rwm' }] };
  }
  const rules = DEFAULT_DEVICE_RULES.map((r) => ({ ...r }));
  for (const d of requested) rules.push({ allow: true, type: d.type, major: d.major, minor: d.minor, access: d.permissions });
  return { devices: requested.map(node), rules };
}
