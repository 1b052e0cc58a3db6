/**
 * OCI runtime handlers (runc, crun) as berth runs them: the binary from config, and a
 * state root of berth's own per handler (`runc --root`), so berth never sees or touches
 * containers of another engine on the same host.
 */
import { readFileSync } from 'node:fs';
import { posix, join } from 'node:path';
import { BerthError, invalidArgument } from '../common/errors.js';
import type { BerthConfig } from '../config/schema.js';

export interface OciRuntime {
  /** The handler's name (the CRI runtime_handler, e.g. "runc"). */
  handler: string;
  /** The runtime binary. */
  path: string;
  /** Its state root, under berth's state dir. */
  root: string;
}

/** The configured runtime for a handler; FailedPrecondition when none is. */
export function ociRuntime(config: Pick<BerthConfig, 'runtimes' | 'state'>, handler: string): OciRuntime {
  const rt = config.runtimes[handler];
  if (!rt) throw new BerthError('FailedPrecondition', `runtime handler "${handler}" is not configured`);
  return { handler, path: rt.path, root: join(config.state, 'runtime', handler) };
}

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
