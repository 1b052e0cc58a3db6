/**
 * The cgroup hierarchies mounted in berthd's mount namespace, read from
 * /proc/self/mountinfo: each v1 controller's first mount, and the v2 mount.
 */
import { unescapeMountPath } from './mount.js';

/** Where a hierarchy is mounted, and the hierarchy path its mount shows (mountinfo's root). */
export interface CgroupMounts {
  v1: Map<string, { mountpoint: string; root: string }>;
  v2?: { mountpoint: string; root: string };
}

/** cgroup mounts from /proc/self/mountinfo. */
export function parseCgroupMounts(mountinfo: string): CgroupMounts {
  const out: CgroupMounts = { v1: new Map() };
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const pre = line.slice(0, sep).split(' ');
    const [fstype, , superOpts = ''] = line.slice(sep + 3).split(' ');
    const root = unescapeMountPath(pre[3] ?? '/');
    const mountpoint = unescapeMountPath(pre[4] ?? '');
    if (fstype === 'cgroup2') {
      out.v2 ??= { mountpoint, root };
    } else if (fstype === 'cgroup') {
      for (const opt of superOpts.split(',')) {
        if (V1_CONTROLLERS.has(opt) && !out.v1.has(opt)) out.v1.set(opt, { mountpoint, root });
      }
    }
  }
  return out;
}

const V1_CONTROLLERS = new Set([
  'cpu',
  'cpuacct',
  'cpuset',
  'memory',
  'pids',
  'blkio',
  'devices',
  'freezer',
  'hugetlb',
  'net_cls',
  'net_prio',
  'perf_event',
  'rdma',
  'misc',
]);
