/**
 * A container's mount list: the standard kernel filesystems, the pod's /etc/hosts,
 * /etc/resolv.conf, /etc/hostname and /dev/shm, then the CRI mounts. A CRI mount replaces
 * a standard mount at the same destination (and a CRI mount of /dev replaces everything
 * under /dev), as containerd does. The result is ordered so parents come before children.
 */
import { posix } from 'node:path';
import { invalidArgument } from '../common/errors.js';
import type { OciMount } from '../oci/spec.js';

export type CriPropagation = 'PROPAGATION_PRIVATE' | 'PROPAGATION_HOST_TO_CONTAINER' | 'PROPAGATION_BIDIRECTIONAL';

export interface CriMount {
  container_path: string;
  host_path: string;
  readonly: boolean;
  /** Accepted and ignored: this host has no SELinux. */
  selinux_relabel: boolean;
  propagation: CriPropagation;
  /** Prepared by idmap.ts (runc 1.1 cannot): read-only on every submount. */
  recursive_read_only?: boolean;
  /** Prepared by idmap.ts (runc 1.1 cannot): an idmapped bind, in a pod with a user namespace. */
  uidMappings?: Array<{ host_id: number; container_id: number; length: number }>;
  gidMappings?: Array<{ host_id: number; container_id: number; length: number }>;
  /** An image volume (image-volumes.ts): mounted by berthd, host_path then set to it. */
  image?: { image: string } | null;
  /** A relative path inside the image volume. */
  image_sub_path?: string;
}

export interface PodFiles {
  hostsPath: string;
  resolvConfPath: string;
  hostnamePath: string;
  /** The pod's /dev/shm; a private tmpfs is mounted when there is none. */
  shmPath?: string;
  /** The pod uses the host IPC namespace: bind the host's /dev/shm. */
  hostIpc: boolean;
}

/** The kernel filesystems every container gets (runc's and containerd's defaults). */
export function standardMounts(privileged: boolean): OciMount[] {
  const roUnlessPrivileged = privileged ? [] : ['ro'];
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    {
      destination: '/dev/pts',
      type: 'devpts',
      source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
    },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', ...roUnlessPrivileged] },
    {
      destination: '/sys/fs/cgroup',
      type: 'cgroup',
      source: 'cgroup',
      options: ['nosuid', 'noexec', 'nodev', 'relatime', ...roUnlessPrivileged],
    },
  ];
}

/** /dev/shm and the pod's /etc files. The /etc files are read-only when the rootfs is. */
export function podMounts(files: PodFiles, readonlyRootfs: boolean): OciMount[] {
  const ro = readonlyRootfs ? ['ro'] : [];
  const bind = (destination: string, source: string): OciMount => ({
    destination,
    type: 'bind',
    source,
    options: ['rbind', 'rprivate', ...ro],
  });
  const shmSource = files.hostIpc ? '/dev/shm' : files.shmPath;
  const shm: OciMount =
    shmSource !== undefined && shmSource !== ''
      ? { destination: '/dev/shm', type: 'bind', source: shmSource, options: ['rbind', 'rprivate'] }
      : { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] };
  return [shm, bind('/etc/hosts', files.hostsPath), bind('/etc/resolv.conf', files.resolvConfPath), bind('/etc/hostname', files.hostnamePath)];
}

const PROPAGATION: Record<CriPropagation, string> = {
  PROPAGATION_PRIVATE: 'rprivate',
  PROPAGATION_HOST_TO_CONTAINER: 'rslave',
  PROPAGATION_BIDIRECTIONAL: 'rshared',
};

/**
 * One CRI mount as an OCI bind mount. rslave and rshared only work when the host path
 * sits on a shared mount (the caller's concern); the root's propagation is raised to
 * match by {@link rootfsPropagation}.
 */
export function criMount(m: CriMount, index: number): OciMount {
  const field = `mounts[${index}]`;
  if (!m.container_path || !posix.isAbsolute(m.container_path)) {
    throw invalidArgument(`${field}.container_path "${m.container_path}" must be an absolute path`);
  }
  if (!m.host_path || !posix.isAbsolute(m.host_path)) {
    throw invalidArgument(`${field}.host_path "${m.host_path}" must be an absolute path`);
  }
  const propagation = PROPAGATION[m.propagation ?? 'PROPAGATION_PRIVATE'];
  if (propagation === undefined) throw invalidArgument(`${field}.propagation "${String(m.propagation)}" is not supported`);
  return {
    destination: cleanPath(m.container_path),
    type: 'bind',
    source: m.host_path,
    options: ['rbind', propagation, ...(m.readonly ? ['ro'] : [])],
  };
}

/** The root mount's propagation the CRI mounts need: rshared for bidirectional, rslave for host-to-container. */
export function rootfsPropagation(mounts: CriMount[]): 'rshared' | 'rslave' | undefined {
  if (mounts.some((m) => m.propagation === 'PROPAGATION_BIDIRECTIONAL')) return 'rshared';
  if (mounts.some((m) => m.propagation === 'PROPAGATION_HOST_TO_CONTAINER')) return 'rslave';
  return undefined;
}

/** An absolute path without "." / ".." segments, repeated or trailing slashes. */
export function cleanPath(p: string): string {
  const n = posix.normalize(p);
  return n.length > 1 ? n.replace(/\/+$/, '') : n;
}

function depth(p: string): number {
  const clean = posix.normalize(p).replace(/\/+$/, '');
  return clean === '' ? 0 : clean.split('/').length - 1;
}

/** Merges default and CRI mounts: CRI mounts win at their destination and under a CRI /dev; stable order by depth. */
export function mergeMounts(defaults: OciMount[], cri: OciMount[]): OciMount[] {
  const taken = new Set(cri.map((m) => cleanPath(m.destination)));
  const kept = defaults.filter((m) => !taken.has(m.destination) && !(taken.has('/dev') && m.destination.startsWith('/dev/')));
  const all = [...kept, ...cri];
  // Array.prototype.sort is stable, so same-depth mounts keep their order.
  return all
    .map((m, i) => ({ m, i, d: depth(m.destination) }))
    .sort((a, b) => a.d - b.d || a.i - b.i)
    .map((x) => x.m);
}
