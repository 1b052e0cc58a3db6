/**
 * The privileged steps of a pod's life in one seam: pinning its namespaces, its /dev/shm
 * mount, its network (CNI ADD/DEL and the loopback) and its sysctls. SandboxService takes
 * a PodHost in its options; {@link systemPodHost} does the real work (main.ts), and unit
 * tests pass fakes so the service's bookkeeping and rollbacks run as any user.
 */
import { CniNetwork, loopbackUp, type CniNetworkOptions, type CniResult, type CniRuntimeConf } from './cni/cni.js';
import type { CniNetworkList } from './cni/conf-dir.js';
import { createPinnedNamespaces, isPinned, removePinnedNamespaces, type PinnedNamespaces, type PodNamespace } from './namespaces.js';
import { mountShm, unmountShm } from './pod-files.js';
import { applySysctls } from './sysctls.js';

/** A pod network: one CNI network list, run as a chain. */
export interface PodNetwork {
  readonly list: CniNetworkList;
  /** ADD through the chain; on failure the chain is rolled back and a BerthError names the plugin. */
  add(rt: CniRuntimeConf, signal?: AbortSignal): Promise<CniResult>;
  /** DEL through the chain in reverse, with the result of ADD when there is one; idempotent. */
  del(rt: CniRuntimeConf, prevResult: CniResult | undefined, signal?: AbortSignal): Promise<void>;
}

export interface PodHost {
  /**
   * Pins new namespaces of `kinds` under `dir` (see createPinnedNamespaces); with
   * `loopback` (a new network namespace), its `lo` is brought up too and
   * {@link PodHost.loopbackUp} is not needed.
   */
  pinNamespaces(dir: string, kinds: PodNamespace[], opts: { hostname?: string; loopback?: boolean; signal?: AbortSignal }): Promise<PinnedNamespaces>;
  /** Unmounts and removes the pins under `dir`; idempotent. */
  removeNamespaces(dir: string): Promise<void>;
  /** Whether `path` is a pinned namespace. */
  isPinned(path: string): boolean;
  mountShm(path: string, sizeBytes: number): Promise<void>;
  /** Idempotent. */
  unmountShm(path: string): Promise<void>;
  /** The network of a CNI network list, its plugins found in `binDirs`. */
  network(list: CniNetworkList, binDirs: string[], opts: CniNetworkOptions): PodNetwork;
  /** Brings `lo` up in the network namespace `netns`. */
  loopbackUp(netns: string, binDirs: string[], signal?: AbortSignal): Promise<void>;
  applySysctls(ns: PinnedNamespaces, sysctls: Record<string, string>, signal?: AbortSignal): Promise<void>;
}

/** The real steps: mounts, namespaces and CNI plugins of this machine. */
export const systemPodHost: PodHost = {
  pinNamespaces: createPinnedNamespaces,
  removeNamespaces: removePinnedNamespaces,
  isPinned,
  mountShm,
  unmountShm,
  network: (list, binDirs, opts) => new CniNetwork(list, binDirs, opts),
  loopbackUp: (netns, binDirs, signal) => loopbackUp(netns, binDirs, signal),
  applySysctls,
};
