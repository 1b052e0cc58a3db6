/**
 * Releasing what a pod holds (its containers' processes, its infra process, its network,
 * shm and namespaces): the teardown SandboxService runs for StopPodSandbox,
 * RemovePodSandbox, the rollback of an interrupted creation and recovery.
 */
import { join } from 'node:path';
import { settleAll } from '../common/settle-all.js';
import type { BerthConfig } from '../config/schema.js';
import type { OciRuntimes } from '../oci/oci-runtime.js';
import type { CniResult, CniRuntimeConf, PortMapping } from './cni/cni.js';
import type { CniNetworkList } from './cni/conf-dir.js';
import type { PodInfra } from './infra.js';
import type { PodHost } from './pod-host.js';
import type { SandboxMetadata, SandboxRecord } from './sandbox-repository.js';

/** What a pod keeps of its network: the CNI config ADD runs (recorded first) and its result. */
export interface StoredNetwork {
  list: CniNetworkList;
  result: CniResult | null;
}

/**
 * What the containers of a pod need done when the pod stops or goes. Given by main.ts
 * (sandbox/ cannot import containers/, which is built after it and needs it).
 */
export interface PodContainerHooks {
  stopAll(sandboxId: string): Promise<void>;
  removeAll(sandboxId: string): Promise<void>;
}

/** What releasing a pod needs of SandboxService. */
export interface PodReleaseContext {
  config: BerthConfig;
  runtimes: OciRuntimes;
  host: PodHost;
  infra: PodInfra;
  /** Where the pods' files are (pod-dirs.ts). */
  podRoot: string;
}

/** The CNI runtime config of pod `rec`'s ADD and DEL in network namespace `netns`. */
export function cniRuntime(rec: { id: string; metadata: SandboxMetadata }, netns: string, portMappings: PortMapping[]): CniRuntimeConf {
  return {
    containerId: rec.id,
    netns,
    ifName: 'eth0',
    args: [
      ['K8S_POD_NAMESPACE', rec.metadata.namespace],
      ['K8S_POD_NAME', rec.metadata.name],
      ['K8S_POD_INFRA_CONTAINER_ID', rec.id],
      ['K8S_POD_UID', rec.metadata.uid],
    ],
    capabilityArgs: { portMappings },
  };
}

/**
 * Releases what the pod holds, each step tolerant of what is already gone. Two strands
 * run side by side: the processes (`stopContainers`, then the infra process, which kills
 * what is left in the PID namespace) and the network's DEL. Neither needs the other: the
 * processes do not need the pod network to die, and DEL needs only the pinned netns,
 * which stays until both are done. Then shm and the namespaces go. Every step of both
 * strands is attempted even when one fails; the first failure is thrown.
 */
export async function releasePod(ctx: PodReleaseContext, rec: SandboxRecord, signal?: AbortSignal, stopContainers?: () => Promise<void>): Promise<void> {
  const processes = async (): Promise<void> => {
    await stopContainers?.();
    if (sharesPid(rec)) await ctx.infra.remove(rec.id, join(ctx.podRoot, rec.id, 'infra'), ctx.runtimes.get(rec.runtimeHandler));
  };
  await settleAll([processes(), delNetwork(ctx, rec, signal)]);
  await settleAll([ctx.host.unmountShm(join(ctx.podRoot, rec.id, 'shm')), rec.nsDir !== null ? ctx.host.removeNamespaces(rec.nsDir) : undefined]);
}

/** CNI DEL of the chain the pod's ADD recorded, with its result; nothing when no ADD may have run. */
async function delNetwork(ctx: PodReleaseContext, rec: SandboxRecord, signal?: AbortSignal): Promise<void> {
  const hostNet = rec.facts.namespaces.network === 'NODE';
  const stored = rec.network as unknown as StoredNetwork | null;
  // Only a recorded intent means ADD may have run; DEL runs the chain it recorded.
  if (hostNet || rec.nsDir === null || !stored) return;
  const netPin = join(rec.nsDir, 'net');
  const net = ctx.host.network(stored.list, ctx.config.cni.bin_dirs, { timeoutMs: ctx.config.sandbox.cni_timeout_seconds * 1000 });
  // DEL must run even when the netns is gone: host-local frees the IP by container id.
  await net.del(cniRuntime(rec, ctx.host.isPinned(netPin) ? netPin : '', rec.facts.portMappings), stored.result ?? undefined, signal);
}

/** Whether a StopPodSandbox (or recovery) released everything the pod held: NOTREADY with no network or namespaces left to free. */
export function released(rec: SandboxRecord): boolean {
  return rec.state === 'notready' && rec.network === null && rec.nsDir === null;
}

/** Whether the pod shares one PID namespace (and so has an infra process). */
export function sharesPid(rec: SandboxRecord): boolean {
  return rec.facts.namespaces.pid === 'POD';
}
