/**
 * Facts the OCI runtime's spec needs from berth's side: the cgroupsPath of a process
 * group, and the lowest oom_score_adj berthd may hand out. The runtime's command line is
 * {@link OciRuntime} (oci-runtime.ts).
 */
import { readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { invalidArgument } from '../common/errors.js';

/**
 * runc's cgroupsPath for a process group named `name` under a pod's cgroup parent: a
 * path under the cgroup root for the cgroupfs driver (`<parent>/berth-<name>`), and
 * "slice:prefix:name" for the systemd driver (the unit becomes berth-<name>.scope).
 */
export function cgroupsPath(driver: 'cgroupfs' | 'systemd', parent: string, name: string): string {
  if (driver === 'systemd') {
    if (parent !== '' && !/^[^/]+\.slice$/.test(parent)) {
      throw invalidArgument(`cgroup parent "${parent}" must be a systemd slice name like "kubepods-pod1.slice" for the systemd cgroup driver`);
    }
    return `${parent}:berth:${name}`;
  }
  if (parent.split('/').includes('..')) throw invalidArgument(`cgroup parent "${parent}" must not contain ".."`);
  return posix.join('/', parent, `berth-${name}`);
}

/**
 * berthd's own oom_score_adj: without CAP_SYS_RESOURCE no process it starts may ask for a
 * lower one (runc would fail), so requests are clamped to it (containerd's restrict_oom_score_adj).
 */
export function ownOomScoreAdj(): number {
  return Number(readFileSync('/proc/self/oom_score_adj', 'utf8').trim()) || 0;
}
