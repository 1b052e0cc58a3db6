/**
 * What a container's spec needs from its pod: the pod's files (hostname, hosts,
 * resolv.conf, shm), the pinned namespaces it joins, its cgroup parent and which
 * namespaces are the host's; and for pid TARGET, the PID namespace of another container.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BerthError } from '../common/errors.js';
import type { SandboxRecord } from '../sandbox/sandbox-repository.js';
import type { ContainerRecord } from './container-repository.js';
import type { CriContainerConfig, generateSpec } from './spec.js';

/** The pod as the spec generator sees it, from the pod's record and its directory `podDir`. */
export function podSpecView(sb: SandboxRecord, podDir: string): Parameters<typeof generateSpec>[0]['sandbox'] {
  const cfg = sb.config as {
    hostname?: string;
    linux?: { cgroup_parent?: string; security_context?: { namespace_options?: { network?: string; ipc?: string; pid?: string } } };
  };
  const ns = cfg.linux?.security_context?.namespace_options ?? {};
  const pin = (k: string): string | undefined => (sb.nsDir !== null && existsSync(join(sb.nsDir, k)) ? join(sb.nsDir, k) : undefined);
  const net = pin('net');
  const ipc = pin('ipc');
  const uts = pin('uts');
  const pid = pin('pid');
  return {
    hostname: readFileSync(join(podDir, 'hostname'), 'utf8').trim(),
    ...(net ? { netnsPath: net } : {}),
    ...(ipc ? { ipcnsPath: ipc } : {}),
    ...(uts ? { utsnsPath: uts } : {}),
    ...(pid ? { pidnsPath: pid } : {}),
    hostsPath: join(podDir, 'hosts'),
    resolvConfPath: join(podDir, 'resolv.conf'),
    hostnamePath: join(podDir, 'hostname'),
    ...(existsSync(join(podDir, 'shm')) && ns.ipc !== 'NODE' ? { shmPath: join(podDir, 'shm') } : {}),
    cgroupParent: cfg.linux?.cgroup_parent ?? '',
    hostNetwork: ns.network === 'NODE',
    hostIpc: ns.ipc === 'NODE',
    hostPid: ns.pid === 'NODE',
  };
}

/**
 * For namespace_options.pid TARGET (ephemeral debug containers, `kubectl debug
 * --target`): the PID namespace of a running container of the same pod.
 */
export function targetPidns(
  sandboxId: string,
  cfg: CriContainerConfig,
  find: (idOrPrefix: string) => ContainerRecord | undefined,
): { targetPidnsPath?: string } {
  const opts = cfg.linux?.security_context?.namespace_options;
  if (opts?.pid !== 'TARGET' || !opts.target_id) return {};
  const target = find(opts.target_id);
  if (!target || target.state === 'creating' || target.sandboxId !== sandboxId) {
    throw new BerthError('NotFound', `namespace_options.target_id: container "${opts.target_id}" not found in pod ${sandboxId}`);
  }
  if (target.state !== 'running' || !target.pid)
    throw new BerthError('FailedPrecondition', `namespace_options.target_id: container ${target.id} is ${target.state}, not running`);
  return { targetPidnsPath: `/proc/${target.pid}/ns/pid` };
}
