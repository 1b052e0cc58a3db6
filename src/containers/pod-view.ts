/**
 * What a container's spec needs from its pod, as the spec generator takes it: from the
 * view the pod gives its containers (sandbox/pod-facts.ts, the only place that knows the
 * pod's layout); and for pid TARGET, the PID namespace of another container.
 */
import { BerthError } from '../common/errors.js';
import type { PodContainerView } from '../sandbox/pod-facts.js';
import type { ContainerRecord } from './container-repository.js';
import type { CriContainerConfig, generateSpec } from './spec.js';

/** The pod as the spec generator sees it. */
export function podSpecView(pod: PodContainerView): Parameters<typeof generateSpec>[0]['sandbox'] {
  const ns = pod.namespaces;
  return {
    hostname: pod.hostname,
    ...(ns.net ? { netnsPath: ns.net } : {}),
    ...(ns.ipc ? { ipcnsPath: ns.ipc } : {}),
    ...(ns.uts ? { utsnsPath: ns.uts } : {}),
    ...(ns.pid ? { pidnsPath: ns.pid } : {}),
    hostsPath: pod.hostsPath,
    resolvConfPath: pod.resolvConfPath,
    hostnamePath: pod.hostnamePath,
    ...(pod.shmPath ? { shmPath: pod.shmPath } : {}),
    cgroupParent: pod.cgroupParent,
    hostNetwork: pod.hostNetwork,
    hostIpc: pod.hostIpc,
    hostPid: pod.hostPid,
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
