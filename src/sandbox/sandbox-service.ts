/**
 * Pod sandboxes without an infra container: pinned namespaces, the pod network from
 * CNI, and the pod's files (hostname, resolv.conf, hosts, /dev/shm). See state.ts for
 * the state machine; every change of state goes through the repository's `update`.
 *
 * RunPodSandbox runs to completion even when its caller's deadline passes: kubelet
 * retries with the same metadata, and the retry is handed the pod that was made instead
 * of failing with "name already reserved". A pod whose answer was delivered is never
 * handed out twice: a second request for the same metadata is ALREADY_EXISTS.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { hostname as osHostname } from 'node:os';
import { join } from 'node:path';
import { DisposableStack } from '../common/disposable.js';
import { BerthError, messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { BerthConfig } from '../config/schema.js';
import { CniNetwork, loopbackUp, podIps, type CniResult, type CniRuntimeConf, type PortMapping } from './cni/cni.js';
import { findNetwork, type CniNetworkList } from './cni/conf-dir.js';
import { createPinnedNamespaces, isPinned, removePinnedNamespaces, type PinnedNamespaces, type PodNamespace } from './namespaces.js';
import { hostsFile, mountShm, resolvConf, unmountShm, validateHostname, writePodFiles } from './pod-files.js';
import type { SandboxMetadata, SandboxRecord, SandboxRepository } from './sandbox-repository.js';
import { applySysctls, validateSysctls } from './sysctls.js';

export type NamespaceMode = 'POD' | 'CONTAINER' | 'NODE' | 'TARGET';

/** What a ready pod keeps of its network: the CNI config ADD ran and its result. */
interface StoredNetwork {
  list: CniNetworkList;
  result: CniResult;
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
  /** The whole config as kubelet sent it, kept for PodSandboxStatus. */
  raw: Record<string, unknown>;
}

export interface SandboxServiceOptions {
  config: BerthConfig;
  repo: SandboxRepository;
  log: Logger;
}

const metaKey = (m: SandboxMetadata): string => JSON.stringify([m.name, m.namespace, m.uid, m.attempt]);
const describeMeta = (m: SandboxMetadata): string => `${m.namespace}/${m.name} (uid ${m.uid}, attempt ${m.attempt})`;

export class SandboxService {
  private readonly nsRoot: string;
  private readonly podRoot: string;
  /** Creations under way, by metadata: a retry joins the one in flight. */
  private readonly creating = new Map<string, Promise<string>>();
  /** One operation at a time per pod. */
  private readonly locks = new Map<string, Promise<unknown>>();
  /** Creation outlives its caller, not the daemon: aborted on shutdown. */
  private readonly lifetime = new AbortController();

  constructor(private readonly o: SandboxServiceOptions) {
    this.nsRoot = join(o.config.state, 'ns');
    this.podRoot = join(o.config.root, 'sandboxes');
    mkdirSync(this.nsRoot, { recursive: true, mode: 0o700 });
    mkdirSync(this.podRoot, { recursive: true, mode: 0o711 });
  }

  private async locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(id) ?? Promise.resolve();
    const next = prev.catch(() => undefined).then(fn);
    this.locks.set(id, next);
    try {
      return await next;
    } finally {
      if (this.locks.get(id) === next) this.locks.delete(id);
    }
  }

  /** Finds a pod by full id or unique prefix. */
  find(idOrPrefix: string): SandboxRecord | undefined {
    const exact = this.o.repo.get(idOrPrefix);
    if (exact) return exact;
    if (idOrPrefix.length < 3 || !/^[a-f0-9]+$/.test(idOrPrefix)) return undefined;
    const ids = this.o.repo.idsWithPrefix(idOrPrefix);
    return ids.length === 1 ? this.o.repo.get(ids[0]!) : undefined;
  }

  list(): SandboxRecord[] {
    return this.o.repo.list().filter((r) => r.state !== 'creating');
  }

  /** Marks that kubelet got the RunPodSandbox answer for `id`. */
  acknowledge(id: string): void {
    this.o.repo.update(id, () => ({ acknowledged: true }));
  }

  /** Creates a pod, or hands back the one an earlier, abandoned request made. */
  async run(spec: PodSandboxSpec): Promise<string> {
    this.validate(spec);
    const key = metaKey(spec.metadata);
    const inflight = this.creating.get(key);
    if (inflight) return inflight;
    const existing = this.o.repo.byMetadata(spec.metadata);
    if (existing) {
      if (!existing.acknowledged && existing.state === 'ready') return existing.id;
      throw new BerthError('AlreadyExists', `pod sandbox ${describeMeta(spec.metadata)} already exists as ${existing.id} (state ${existing.state})`);
    }
    const p = this.create(spec).finally(() => this.creating.delete(key));
    this.creating.set(key, p);
    return p;
  }

  private validate(spec: PodSandboxSpec): void {
    if (!(spec.runtimeHandler in this.o.config.runtimes)) {
      throw new BerthError('InvalidArgument', `runtime_handler "${spec.runtimeHandler}" is not configured (configured: ${Object.keys(this.o.config.runtimes).join(', ')})`);
    }
    if (spec.namespaces.network !== 'NODE') validateHostname(spec.hostname);
    validateSysctls(spec.sysctls, { network: spec.namespaces.network === 'NODE', ipc: spec.namespaces.ipc === 'NODE' });
    const cg = spec.cgroupParent;
    if (cg !== '') {
      if (this.o.config.cgroup_driver === 'systemd' && !/^[A-Za-z0-9_.\\@:-]+\.slice$/.test(cg)) {
        throw new BerthError('InvalidArgument', `linux.cgroup_parent "${cg}" is not a systemd slice name (e.g. kubepods-besteffort-pod1234.slice), as the systemd cgroup driver needs`);
      }
      if (this.o.config.cgroup_driver === 'cgroupfs' && (!cg.startsWith('/') || cg.includes('..'))) {
        throw new BerthError('InvalidArgument', `linux.cgroup_parent "${cg}" is not an absolute cgroup path (e.g. /kubepods/besteffort/pod1234), as the cgroupfs driver needs`);
      }
    }
  }

  private cniRuntime(rec: { id: string; metadata: SandboxMetadata }, netns: string, portMappings: PortMapping[]): CniRuntimeConf {
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

  private async network(): Promise<CniNetwork> {
    const found = await findNetwork(this.o.config.cni.conf_dir);
    if (!found.found) throw new BerthError('FailedPrecondition', `the pod network is not ready: ${found.reason}`);
    return new CniNetwork(found.network, this.o.config.cni.bin_dirs, { timeoutMs: this.o.config.sandbox.cni_timeout_seconds * 1000 });
  }

  private async create(spec: PodSandboxSpec): Promise<string> {
    const id = randomBytes(32).toString('hex');
    const createdAt = String(BigInt(Date.now()) * 1_000_000n);
    const signal = this.lifetime.signal;
    const log = this.o.log.child({ sandbox: id, pod: `${spec.metadata.namespace}/${spec.metadata.name}` });
    this.o.repo.insert(id, spec.metadata, spec.raw, spec.runtimeHandler, createdAt);
    const undo = new DisposableStack();
    undo.defer(() => this.o.repo.delete(id));
    try {
      const hostNet = spec.namespaces.network === 'NODE';
      const kinds: PodNamespace[] = [];
      if (!hostNet) kinds.push('net', 'uts');
      if (spec.namespaces.ipc !== 'NODE') kinds.push('ipc');
      const nsDir = join(this.nsRoot, id);
      let pins: PinnedNamespaces = {};
      if (kinds.length > 0) {
        this.o.repo.update(id, () => ({ nsDir }));
        undo.defer(() => removePinnedNamespaces(nsDir));
        pins = await createPinnedNamespaces(nsDir, kinds, { ...(hostNet ? {} : { hostname: spec.hostname }), signal });
      }
      if (Object.keys(spec.sysctls).length > 0) await applySysctls(pins, spec.sysctls, signal);

      const podDir = join(this.podRoot, id);
      await mkdir(podDir, { recursive: true, mode: 0o711 });
      undo.defer(() => rm(podDir, { recursive: true, force: true }));
      if (spec.namespaces.ipc !== 'NODE') {
        undo.defer(() => unmountShm(join(podDir, 'shm')));
        await mountShm(join(podDir, 'shm'), this.o.config.sandbox.shm_size_bytes);
      }

      let result: CniResult | undefined;
      let stored: StoredNetwork | null = null;
      let ips: string[] = [];
      if (!hostNet) {
        const net = await this.network();
        await loopbackUp(pins.net!, this.o.config.cni.bin_dirs, signal);
        const rt = this.cniRuntime({ id, metadata: spec.metadata }, pins.net!, spec.portMappings);
        result = await net.add(rt, signal);
        undo.defer(() => net.del(rt, result));
        ips = podIps(result);
        // DEL must run the chain ADD ran, even if the conf dir changes meanwhile.
        stored = { list: net.list, result };
      }

      const hostResolv = readFileSync('/etc/resolv.conf', 'utf8');
      await writePodFiles(podDir, {
        hostname: hostNet ? osHostname() : spec.hostname,
        resolvConf: spec.dns ? resolvConf(spec.dns, hostResolv) : hostResolv,
        hosts: hostNet ? readFileSync('/etc/hosts', 'utf8') : hostsFile(spec.hostname, ips),
      });

      this.o.repo.update(id, () => ({ state: 'ready', network: stored as unknown as Record<string, unknown> | null, ips }));
      undo.move();
      log.info('pod sandbox ready', { ips });
      return id;
    } catch (err) {
      log.warn('pod sandbox creation failed; rolling back', { error: messageOf(err) });
      await undo.dispose().catch((e: unknown) => log.error('rollback of a failed pod sandbox was incomplete', { error: messageOf(e) }));
      throw err;
    }
  }

  /** Releases the pod's network, namespaces and shm; idempotent. Unknown ids succeed (CRI). */
  async stop(idOrPrefix: string, signal?: AbortSignal): Promise<void> {
    const found = this.find(idOrPrefix);
    if (!found) return;
    await this.locked(found.id, async () => {
      const rec = this.o.repo.get(found.id);
      if (!rec || rec.state === 'notready' || rec.state === 'removing') return;
      await this.release(rec, signal);
      this.o.repo.update(rec.id, () => ({ state: 'notready', network: null, nsDir: null, ips: [] }));
      this.o.log.info('pod sandbox stopped', { sandbox: rec.id });
    });
  }

  /** Network DEL, then namespaces and shm: each step tolerant of what is already gone. */
  private async release(rec: SandboxRecord, signal?: AbortSignal): Promise<void> {
    const spec = rec.config as { linux?: { security_context?: { namespace_options?: { network?: string } } }; port_mappings?: unknown };
    const hostNet = spec.linux?.security_context?.namespace_options?.network === 'NODE';
    if (!hostNet && rec.nsDir !== null) {
      const netPin = join(rec.nsDir, 'net');
      const stored = rec.network as unknown as StoredNetwork | null;
      // The chain ADD ran; without one (a crash mid-creation), today's config.
      const net = stored
        ? new CniNetwork(stored.list, this.o.config.cni.bin_dirs, { timeoutMs: this.o.config.sandbox.cni_timeout_seconds * 1000 })
        : await this.network().catch(() => undefined);
      if (net) {
        // DEL must run even when the netns is gone: host-local frees the IP by container id.
        await net.del(this.cniRuntime(rec, isPinned(netPin) ? netPin : '', portMappingsOf(rec)), stored?.result, signal);
      } else if (rec.network !== null) {
        this.o.log.warn('no CNI network config to tear the pod network down with; its IP may stay allocated', { sandbox: rec.id });
      }
    }
    await unmountShm(join(this.podRoot, rec.id, 'shm'));
    if (rec.nsDir !== null) await removePinnedNamespaces(rec.nsDir);
  }

  /** Stops the pod if needed and removes everything of it; idempotent. */
  async remove(idOrPrefix: string, signal?: AbortSignal): Promise<void> {
    const found = this.find(idOrPrefix);
    if (!found) return;
    await this.locked(found.id, async () => {
      const rec = this.o.repo.get(found.id);
      if (!rec) return;
      if (rec.state === 'ready' || rec.state === 'creating') await this.release(rec, signal);
      this.o.repo.update(rec.id, () => ({ state: 'removing' }));
      await rm(join(this.podRoot, rec.id), { recursive: true, force: true });
      if (rec.nsDir !== null) await removePinnedNamespaces(rec.nsDir);
      this.o.repo.delete(rec.id);
      this.o.log.info('pod sandbox removed', { sandbox: rec.id });
    });
  }

  /**
   * Recovery, assuming nothing about what survived: `creating` rows are rolled back (a
   * crash interrupted them), `removing` rows are finished, `ready` pods whose network
   * namespace vanished (a reboot) become `notready`, and pins or pod dirs without a row go.
   */
  async recover(): Promise<void> {
    for (const rec of this.o.repo.list()) {
      try {
        if (rec.state === 'creating') {
          await this.release(rec);
          await rm(join(this.podRoot, rec.id), { recursive: true, force: true });
          this.o.repo.delete(rec.id);
          this.o.log.info('recovery: rolled back an interrupted pod sandbox creation', { sandbox: rec.id });
        } else if (rec.state === 'removing') {
          await this.remove(rec.id);
        } else if (rec.state === 'ready' && rec.nsDir !== null && !isPinned(join(rec.nsDir, 'net')) && rec.network !== null) {
          await this.release(rec);
          this.o.repo.update(rec.id, () => ({ state: 'notready', network: null, nsDir: null, ips: [] }));
          this.o.log.warn('recovery: pod sandbox lost its network namespace; marked NOTREADY', { sandbox: rec.id });
        }
      } catch (err) {
        this.o.log.error('recovery of a pod sandbox failed', { sandbox: rec.id, error: messageOf(err) });
      }
    }
    const known = new Set(this.o.repo.list().map((r) => r.id));
    for (const dir of [this.nsRoot, this.podRoot]) {
      for (const name of readdirSync(dir)) {
        if (known.has(name)) continue;
        if (dir === this.nsRoot) await removePinnedNamespaces(join(dir, name));
        else {
          await unmountShm(join(dir, name, 'shm'));
          await rm(join(dir, name), { recursive: true, force: true });
        }
        this.o.log.info('recovery: removed leftovers of an unknown pod sandbox', { path: join(dir, name) });
      }
    }
  }

  /** Stops creations in flight (shutdown). */
  close(): void {
    this.lifetime.abort(new BerthError('Unavailable', 'berthd is shutting down'));
  }

  /** Where the pod's files are (for containers: hosts, resolv.conf, hostname, shm). */
  podDir(id: string): string {
    return join(this.podRoot, id);
  }
}

function portMappingsOf(rec: SandboxRecord): PortMapping[] {
  const pm = (rec.config as { port_mappings?: Array<{ protocol?: string; container_port?: number; host_port?: number; host_ip?: string }> }).port_mappings ?? [];
  return toPortMappings(pm);
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
