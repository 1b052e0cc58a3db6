/**
 * A pod's facts, decided once when it is made (sandbox-repository.ts stores them), and
 * what its containers are told about it: the paths of the pod's files and pinned
 * namespaces, which namespaces are the host's, its cgroup parent and user namespace. The
 * layout of a pod's directories is known here and in sandbox-service.ts only.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { IdMap } from '../common/userns.js';
import type { PortMapping } from './cni/protocol.js';
import type { DnsConfig } from './pod-files.js';
import { POD_FACTS_VERSION, type NamespaceMode, type PodFacts, type PodResources, type SandboxRecord } from './sandbox-repository.js';
import { usernsPin, type PodUserns } from './userns.js';

/** A hostname from a pod name: RFC 1123, at most 63 characters. */
export function defaultHostname(podName: string): string {
  const h = podName
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
    .replace(/-+$/, '');
  return h === '' ? 'pod' : h;
}

/** CRI port mappings → CNI's, keeping only those with a host port (portmap ignores the rest). */
export function toPortMappings(pm: Array<{ protocol?: string; container_port?: number; host_port?: number; host_ip?: string }>): PortMapping[] {
  return pm
    .filter((p) => (p.host_port ?? 0) > 0)
    .map((p) => ({
      hostPort: p.host_port!,
      containerPort: p.container_port ?? 0,
      protocol: (p.protocol ?? 'TCP').toLowerCase() as PortMapping['protocol'],
      ...(p.host_ip ? { hostIP: p.host_ip } : {}),
    }));
}

/** What the facts are decided from: the checked request, and what creation settled (hostname, DNS). */
export interface PodFactsInput {
  hostname: string;
  dns: DnsConfig | undefined;
  logDirectory: string;
  namespaces: { network: NamespaceMode; pid: NamespaceMode; ipc: NamespaceMode };
  userns?: PodUserns;
  cgroupParent: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  portMappings: PortMapping[];
  sysctls: Record<string, string>;
  overhead?: PodResources;
  resources?: PodResources;
}

/** The facts of a new pod. The DNS config is kept only when it is the one applied (an empty one means the host's resolv.conf). */
export function podFacts(i: PodFactsInput): PodFacts {
  const dns = i.dns && i.dns.servers.length + i.dns.searches.length + i.dns.options.length > 0 ? i.dns : null;
  return {
    v: POD_FACTS_VERSION,
    hostname: i.hostname,
    logDirectory: i.logDirectory,
    namespaces: i.namespaces,
    userns: i.userns ? { uids: i.userns.uids.map(idMap), gids: i.userns.gids.map(idMap) } : null,
    cgroupParent: i.cgroupParent,
    labels: i.labels,
    annotations: i.annotations,
    portMappings: i.portMappings,
    dns,
    sysctls: i.sysctls,
    overhead: i.overhead ?? null,
    resources: i.resources ?? null,
  };
}

const idMap = (m: IdMap): IdMap => ({ containerId: m.containerId, hostId: m.hostId, size: m.size });

/** The namespaces a pod pins under its namespace directory, by its facts. */
export function pinnedKinds(f: PodFacts): Array<'net' | 'uts' | 'ipc' | 'pid'> {
  return [
    ...(f.namespaces.network === 'NODE' ? [] : (['net', 'uts'] as const)),
    ...(f.namespaces.ipc === 'NODE' ? [] : (['ipc'] as const)),
    ...(f.namespaces.pid === 'POD' ? (['pid'] as const) : []),
  ];
}

/** What a container of a pod is given of it (see {@link containerViewOf}). */
export interface PodContainerView {
  hostname: string;
  hostnamePath: string;
  hostsPath: string;
  resolvConfPath: string;
  /** The pod's /dev/shm, when the pod has its own IPC namespace. */
  shmPath?: string;
  /** Paths of the pod's pinned namespaces that exist. */
  namespaces: { net?: string; ipc?: string; uts?: string; pid?: string };
  hostNetwork: boolean;
  hostIpc: boolean;
  hostPid: boolean;
  cgroupParent: string;
  /** The pod's own user namespace: its pin and mappings. */
  userns?: { path: string; uids: IdMap[]; gids: IdMap[] };
  /** Where kubelet wants the containers' logs ('' when it did not say). */
  logDirectory: string;
}

/** The view of pod `rec` whose files are in `podDir`. */
export function containerViewOf(rec: SandboxRecord, podDir: string): PodContainerView {
  const f = rec.facts;
  const pin = (k: string): string | undefined => (rec.nsDir !== null && existsSync(join(rec.nsDir, k)) ? join(rec.nsDir, k) : undefined);
  const namespaces: PodContainerView['namespaces'] = {};
  for (const k of ['net', 'ipc', 'uts', 'pid'] as const) {
    const p = pin(k);
    if (p) namespaces[k] = p;
  }
  const shm = join(podDir, 'shm');
  return {
    hostname: f.hostname,
    hostnamePath: join(podDir, 'hostname'),
    hostsPath: join(podDir, 'hosts'),
    resolvConfPath: join(podDir, 'resolv.conf'),
    ...(f.namespaces.ipc !== 'NODE' && existsSync(shm) ? { shmPath: shm } : {}),
    namespaces,
    hostNetwork: f.namespaces.network === 'NODE',
    hostIpc: f.namespaces.ipc === 'NODE',
    hostPid: f.namespaces.pid === 'NODE',
    cgroupParent: f.cgroupParent,
    ...(f.userns && rec.nsDir !== null ? { userns: { path: usernsPin(rec.nsDir), uids: f.userns.uids, gids: f.userns.gids } } : {}),
    logDirectory: f.logDirectory,
  };
}
