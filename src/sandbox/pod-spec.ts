/**
 * A pod as the CRI layer checked it, and the checks and reading done before anything of
 * the pod is made (the runtime handler, hostname, sysctls, cgroup parent, user namespace
 * support, resolv.conf, the network config), so that a bad request costs nothing.
 */
import { readFileSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '../common/errors.js';
import { mountFeatures } from '../common/mount-probes.js';
import type { BerthConfig } from '../config/schema.js';
import type { OciRuntimes } from '../oci/oci-runtime.js';
import type { PortMapping } from './cni/cni.js';
import type { PodNetwork } from './pod-host.js';
import { defaultHostname } from './pod-facts.js';
import { resolvConf, validateHostname } from './pod-files.js';
import type { NamespaceMode, PodResources, SandboxMetadata } from './sandbox-repository.js';
import { validateSysctls } from './sysctls.js';
import type { PodUserns } from './userns.js';

/** What validation prepared for creation. */
export interface Prepared {
  resolv: string;
  hostname: string;
  network: PodNetwork | undefined;
}

/** What berth needs from a PodSandboxConfig, already checked field by field by the CRI layer. */
export interface PodSandboxSpec {
  metadata: SandboxMetadata;
  hostname: string;
  dns: { servers: string[]; searches: string[]; options: string[] } | undefined;
  portMappings: PortMapping[];
  cgroupParent: string;
  sysctls: Record<string, string>;
  namespaces: { network: NamespaceMode; pid: NamespaceMode; ipc: NamespaceMode };
  runtimeHandler: string;
  /** A user namespace of the pod's own (userns_options mode POD); absent: the host's. */
  userns?: PodUserns;
  logDirectory: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  /** LinuxPodSandboxConfig.overhead and .resources: recorded (kubelet sizes the pod's cgroup itself). */
  overhead?: PodResources;
  resources?: PodResources;
  /** The whole config as kubelet sent it, kept for verbose PodSandboxStatus only. */
  raw: Record<string, unknown>;
}

/** What validation reads: the config, the runtimes, and the pod network (for pods that are not on the host's). */
export interface ValidationEnv {
  config: BerthConfig;
  runtimes: OciRuntimes;
  network(): Promise<PodNetwork>;
}

/**
 * Checks everything that can be checked before touching the system, and prepares what
 * needs reading (the network config, resolv.conf), so a bad request costs nothing.
 */
export async function validatePodSpec(spec: PodSandboxSpec, env: ValidationEnv): Promise<Prepared> {
  if (!env.runtimes.has(spec.runtimeHandler)) {
    throw new BerthError('InvalidArgument', `runtime_handler "${spec.runtimeHandler}" is not configured (configured: ${env.runtimes.handlers().join(', ')})`);
  }
  const hostNet = spec.namespaces.network === 'NODE';
  if (!hostNet && spec.hostname !== '') validateHostname(spec.hostname);
  validateSysctls(spec.sysctls, { network: hostNet, ipc: spec.namespaces.ipc === 'NODE' });
  const cg = spec.cgroupParent;
  if (cg !== '') {
    if (env.config.cgroup_driver === 'systemd' && !/^[A-Za-z0-9_.\\@:-]+\.slice$/.test(cg)) {
      throw new BerthError(
        'InvalidArgument',
        `linux.cgroup_parent "${cg}" is not a systemd slice name (e.g. kubepods-besteffort-pod1234.slice), as the systemd cgroup driver needs`,
      );
    }
    if (env.config.cgroup_driver === 'cgroupfs' && (!cg.startsWith('/') || cg.includes('..'))) {
      throw new BerthError(
        'InvalidArgument',
        `linux.cgroup_parent "${cg}" is not an absolute cgroup path (e.g. /kubepods/besteffort/pod1234), as the cgroupfs driver needs`,
      );
    }
  }
  if (spec.userns) {
    if (spec.namespaces.pid === 'POD') {
      throw new BerthError(
        'FailedPrecondition',
        'namespace_options.userns_options: a pod user namespace with a shared PID namespace (pid POD) is not supported yet',
      );
    }
    const probe = (await mountFeatures(join(env.config.state, 'probe'))).idmappedMounts;
    if (!probe.ok) {
      throw new BerthError(
        'FailedPrecondition',
        `namespace_options.userns_options: runtime handler "${spec.runtimeHandler}" cannot run pods in a user namespace on this host: ${probe.reason}`,
      );
    }
  }
  const hostResolv = readFileSync('/etc/resolv.conf', 'utf8');
  const resolv = spec.dns ? resolvConf(spec.dns, hostResolv) : hostResolv;
  // Host-network pods keep kubelet's hostname (its node name) when it sends one.
  const hostname = spec.hostname !== '' ? spec.hostname : hostNet ? osHostname() : defaultHostname(spec.metadata.name);
  return { resolv, hostname, network: hostNet ? undefined : await env.network() };
}
