/**
 * Pod sandboxes without an infra container: pinned namespaces, the pod network from
 * CNI, and the pod's files (hostname, resolv.conf, hosts, /dev/shm). See state.ts for
 * the state machine; every change of state goes through the repository's `update`.
 *
 * RunPodSandbox runs to completion even when its caller's deadline passes: kubelet
 * retries with the same metadata, and the retry is handed the pod that was made instead
 * of failing with "name already reserved". Once a RunPodSandbox answer for a pod has been
 * delivered, a later request for the same metadata is ALREADY_EXISTS (callers that join a
 * creation in flight all get its id).
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { DisposableStack } from '../common/disposable.js';
import { settleAll } from '../common/settle-all.js';
import { nowNs } from '../common/clock.js';
import { recordTimeline, timelineSoFar } from '../common/timeline.js';
import { traced } from '../common/trace-points.js';
import { findByIdOrPrefix } from '../common/id-prefix.js';
import { KeyedLock } from '../common/keyed-lock.js';
import { BerthError, messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { requireState, type RequireStateOptions } from '../common/require-record.js';
import type { BerthConfig } from '../config/schema.js';
import type { OciRuntimes } from '../oci/oci-runtime.js';
import { ownOomScoreAdj } from '../oci/runtime.js';
import type { Shim } from '../shim/shim.js';
import { podIps, type CniResult } from './cni/cni.js';
import { findNetwork } from './cni/conf-dir.js';
import { PodInfra } from './infra.js';
import { pinPidNamespace, type PinnedNamespaces, type PodNamespace } from './namespaces.js';
import { hostsFile, writePodFiles } from './pod-files.js';
import { systemPodHost, type PodHost, type PodNetwork } from './pod-host.js';
import { containerViewOf, pinnedKinds, podFacts, type PodContainerView } from './pod-facts.js';
import { podDirs, strayPodEntries } from './pod-dirs.js';
import { cniRuntime, released, releasePod, sharesPid, type PodContainerHooks, type PodReleaseContext, type StoredNetwork } from './pod-release.js';
import type { PodResources, SandboxMetadata, SandboxRecord, SandboxRepository } from './sandbox-repository.js';
import type { SandboxState } from './state.js';
import { createPodUserns } from './userns.js';
import { validatePodSpec, type PodSandboxSpec, type Prepared } from './pod-spec.js';

export type { NamespaceMode } from './sandbox-repository.js';
export type { PodSandboxSpec } from './pod-spec.js';
export { toPortMappings } from './pod-facts.js';
export { sharesPid, type PodContainerHooks } from './pod-release.js';

export interface SandboxServiceOptions {
  config: BerthConfig;
  repo: SandboxRepository;
  /** The configured OCI runtimes, by handler. */
  runtimes: OciRuntimes;
  /** Runs the infra process of pods that share a PID namespace. */
  shim: Shim;
  /** Stops and removes the pod's containers (StopPodSandbox, RemovePodSandbox). */
  containers: PodContainerHooks;
  log: Logger;
  /** The privileged steps (namespaces, shm, CNI, sysctls); {@link systemPodHost} when absent. */
  host?: PodHost;
}

const metaKey = (m: SandboxMetadata): string => JSON.stringify([m.name, m.namespace, m.uid, m.attempt]);
const describeMeta = (m: SandboxMetadata): string => `${m.namespace}/${m.name} (uid ${m.uid}, attempt ${m.attempt})`;

export class SandboxService {
  private readonly nsRoot: string;
  private readonly podRoot: string;
  /** Creations under way, by metadata: a retry joins the one in flight. */
  private readonly creating = new Map<string, Promise<string>>();
  /** One operation at a time per pod. */
  private readonly locks = new KeyedLock();
  /** Creation outlives its caller, not the daemon: aborted on shutdown. */
  private readonly lifetime = new AbortController();
  private readonly infra: PodInfra;
  /** Infra processes being watched for their exit, by pod id. */
  private readonly watching = new Set<string>();
  private readonly minOomScoreAdj: number;
  private readonly host: PodHost;
  /** What releasing a pod needs (pod-release.ts). */
  private readonly teardown: PodReleaseContext;

  constructor(private readonly o: SandboxServiceOptions) {
    this.host = o.host ?? systemPodHost;
    ({ nsRoot: this.nsRoot, podRoot: this.podRoot } = podDirs(o.config));
    mkdirSync(this.nsRoot, { recursive: true, mode: 0o700 });
    mkdirSync(this.podRoot, { recursive: true, mode: 0o711 });
    chmodSync(this.nsRoot, 0o700);
    chmodSync(this.podRoot, 0o711);
    this.infra = new PodInfra({ shim: o.shim });
    this.minOomScoreAdj = ownOomScoreAdj();
    this.teardown = { config: o.config, runtimes: o.runtimes, host: this.host, infra: this.infra, podRoot: this.podRoot };
  }

  private locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(id, fn);
  }

  /** Finds a pod by full id or unique prefix. */
  find(idOrPrefix: string): SandboxRecord | undefined {
    return findByIdOrPrefix(
      idOrPrefix,
      (id) => this.o.repo.get(id),
      (prefix) => this.o.repo.idsWithPrefix(prefix),
    );
  }

  /**
   * The pod `idOrPrefix` names, in one of `opts.states`: NotFound when there is none (or
   * it is still being created), FailedPrecondition naming its state otherwise.
   */
  requireSandbox(idOrPrefix: string, opts: RequireStateOptions<SandboxState> = {}): SandboxRecord {
    return requireState('pod sandbox', idOrPrefix, this.find(idOrPrefix), opts);
  }

  list(): SandboxRecord[] {
    return this.o.repo.list().filter((r) => r.state !== 'creating');
  }

  /** Marks that kubelet got the RunPodSandbox answer for `id`. */
  acknowledge(id: string): void {
    this.o.repo.update(id, () => ({ acknowledged: true }));
  }

  /** Creates a pod, or hands back the one an earlier, abandoned request made. Its steps are recorded as the pod's timeline (common/timeline.ts). */
  run(spec: PodSandboxSpec): Promise<string> {
    return recordTimeline('RunPodSandbox', () => this.runRecorded(spec));
  }

  private async runRecorded(spec: PodSandboxSpec): Promise<string> {
    const prepared = await traced('berth:pod.validate', {}, () => this.validate(spec));
    const key = metaKey(spec.metadata);
    const inflight = this.creating.get(key);
    if (inflight) return inflight;
    const p = this.runOnce(spec, prepared).finally(() => this.creating.delete(key));
    this.creating.set(key, p);
    return p;
  }

  private async runOnce(spec: PodSandboxSpec, prepared: Prepared): Promise<string> {
    const existing = this.o.repo.byMetadata(spec.metadata);
    if (existing) {
      // Wait for any Stop/Remove of it to finish, then look again.
      const cur = await this.locked(existing.id, async () => this.o.repo.get(existing.id));
      if (cur?.state === 'creating') {
        // A creation nobody is running any more (its rollback failed, or a crash): finish
        // rolling it back, then create afresh.
        await this.locked(cur.id, () => this.rollBack(cur));
      } else if (cur && !cur.acknowledged && cur.state === 'ready') {
        return cur.id;
      } else if (cur) {
        throw new BerthError('AlreadyExists', `pod sandbox ${describeMeta(spec.metadata)} already exists as ${cur.id} (state ${cur.state})`);
      }
    }
    const id = randomBytes(32).toString('hex');
    return this.locked(id, () => this.create(id, spec, prepared));
  }

  /** Releases what a `creating` row may have made and deletes the row (only if all of that worked). */
  private async rollBack(rec: SandboxRecord): Promise<void> {
    await releasePod(this.teardown, rec);
    await rm(join(this.podRoot, rec.id), { recursive: true, force: true });
    this.o.repo.delete(rec.id);
    this.o.log.info('rolled back an interrupted pod sandbox creation', { sandbox: rec.id });
  }

  private validate(spec: PodSandboxSpec): Promise<Prepared> {
    return validatePodSpec(spec, { config: this.o.config, runtimes: this.o.runtimes, network: () => this.network() });
  }

  private async network(): Promise<PodNetwork> {
    const found = await findNetwork(this.o.config.cni.conf_dir);
    if (!found.found) throw new BerthError('FailedPrecondition', `the pod network is not ready: ${found.reason}`);
    return this.host.network(found.network, this.o.config.cni.bin_dirs, { timeoutMs: this.o.config.sandbox.cni_timeout_seconds * 1000 });
  }

  private async create(id: string, spec: PodSandboxSpec, prepared: Prepared): Promise<string> {
    const createdAt = nowNs();
    const signal = this.lifetime.signal;
    const log = this.o.log.child({ sandbox: id, pod: `${spec.metadata.namespace}/${spec.metadata.name}` });
    const facts = podFacts({ ...spec, hostname: prepared.hostname });
    this.o.repo.insert(id, spec.metadata, facts, spec.raw, spec.runtimeHandler, createdAt);
    const undo = new DisposableStack();
    try {
      const hostNet = spec.namespaces.network === 'NODE';
      const kinds: PodNamespace[] = [];
      if (!hostNet) kinds.push('net', 'uts');
      if (spec.namespaces.ipc !== 'NODE') kinds.push('ipc');
      const sharedPid = spec.namespaces.pid === 'POD';
      const nsDir = join(this.nsRoot, id);
      let pins: PinnedNamespaces = {};
      // `lo` of a new network namespace is brought up as it is pinned (no loopback plugin),
      // except in a pod user namespace, whose pins userns.ts makes.
      const loopbackAtPin = !hostNet && !spec.userns;
      if (kinds.length > 0 || sharedPid || spec.userns) {
        this.o.repo.update(id, () => ({ nsDir }));
        undo.defer(() => this.host.removeNamespaces(nsDir));
      }
      // The namespaces and the pod's dir (with its shm) need nothing of each other: made side
      // by side, both settled before anything goes on (or is undone).
      const nsMade = (async (): Promise<void> => {
        if (spec.userns) pins = await traced('berth:pod.namespaces', { podId: id }, () => createPodUserns(nsDir, spec.userns!, kinds, prepared.hostname));
        else if (kinds.length > 0) {
          pins = await traced('berth:pod.namespaces', { podId: id }, () =>
            this.host.pinNamespaces(nsDir, kinds, { ...(hostNet ? {} : { hostname: prepared.hostname }), loopback: loopbackAtPin, signal }),
          );
        }
      })();
      const podDir = join(this.podRoot, id);
      const dirMade = traced('berth:pod.dir', { podId: id }, async () => {
        await mkdir(podDir, { recursive: true, mode: 0o711 });
        undo.defer(() => rm(podDir, { recursive: true, force: true }));
        if (spec.namespaces.ipc !== 'NODE') {
          undo.defer(() => this.host.unmountShm(join(podDir, 'shm')));
          await this.host.mountShm(join(podDir, 'shm'), this.o.config.sandbox.shm_size_bytes);
        }
      });
      await settleAll([nsMade, dirMade]);

      // The infra process starts while CNI runs: both need only the pins.
      let infra: Promise<{ pid: number } | { error: unknown }> | undefined;
      if (sharedPid) {
        const rt = this.o.runtimes.get(spec.runtimeHandler);
        undo.defer(() => this.infra.remove(id, join(podDir, 'infra'), rt));
        infra = traced('berth:pod.infra', { podId: id }, () =>
          this.infra.start(
            {
              sandboxId: id,
              infraPath: this.o.config.sandbox.infra_path,
              namespaces: pins,
              cgroupDriver: this.o.config.cgroup_driver,
              cgroupParent: spec.cgroupParent,
              minOomScoreAdj: this.minOomScoreAdj,
            },
            join(podDir, 'infra'),
            rt,
            signal,
          ),
        ).then(
          (pid) => ({ pid }),
          (error: unknown) => ({ error }),
        );
        // Settled before any undo runs, whatever fails first.
        undo.defer(async () => void (await infra));
      }

      let ips: string[] = [];
      if (prepared.network) {
        const net = prepared.network;
        ips = await traced('berth:pod.network', { podId: id }, async () => {
          // `lo` is brought up beside the chain's ADD (each plugin a process of some ms): the
          // two touch different interfaces of the pod's namespace.
          const loUp = loopbackAtPin ? Promise.resolve() : this.host.loopbackUp(pins.net!, this.o.config.cni.bin_dirs, signal);
          loUp.catch(() => undefined);
          const rt = cniRuntime({ id, metadata: spec.metadata }, pins.net!, spec.portMappings);
          // Intent first: the chain ADD runs is recorded, so DEL (now or after a crash)
          // runs the same chain; and DEL is armed before ADD, since ADD may half-succeed.
          const intent: StoredNetwork = { list: net.list, result: null };
          this.o.repo.update(id, () => ({ network: intent as unknown as Record<string, unknown> }));
          // The undo reads the result when it runs: after a failed ADD there is none.
          const added: { result?: CniResult } = {};
          undo.defer(() => net.del(rt, added.result));
          const adding = net.add(rt, signal).then((r) => (added.result = r));
          await settleAll([adding, loUp]);
          const result = await adding;
          const stored: StoredNetwork = { list: net.list, result };
          const got = podIps(result);
          this.o.repo.update(id, () => ({ network: stored as unknown as Record<string, unknown>, ips: got }));
          return got;
        });
      }
      if (infra) {
        const started = await infra;
        if ('error' in started) throw started.error;
        await traced('berth:pod.pidns', { podId: id }, () => pinPidNamespace(nsDir, started.pid));
      }
      // After CNI, so per-interface sysctls (net.ipv4.conf.eth0.*) find eth0.
      if (Object.keys(spec.sysctls).length > 0) await this.host.applySysctls(pins, spec.sysctls, signal);

      await traced('berth:pod.files', { podId: id }, () =>
        writePodFiles(podDir, {
          hostname: prepared.hostname,
          resolvConf: prepared.resolv,
          hosts: hostNet ? readFileSync('/etc/hosts', 'utf8') : hostsFile(prepared.hostname, ips),
        }),
      );

      // The timeline is kept with the pod's facts, so it outlives a restart of berthd.
      this.o.repo.update(id, (cur) => ({ state: 'ready', facts: { ...cur.facts, timeline: timelineSoFar() } }));
      undo.move();
      if (sharedPid) this.watchInfra(id);
      log.info('pod sandbox ready', { ips });
      return id;
    } catch (err) {
      log.warn('pod sandbox creation failed; rolling back', { error: messageOf(err) });
      try {
        await undo.dispose();
        this.o.repo.delete(id);
      } catch (e) {
        // The row stays `creating`: a retry of the same pod, or recovery, finishes the job.
        log.error('rollback of a failed pod sandbox was incomplete; it will be retried', { error: messageOf(e) });
      }
      throw err;
    }
  }

  /**
   * Releases the pod's network, namespaces and shm; idempotent. Unknown ids succeed (CRI).
   * Its steps are kept with the pod's timeline, after RunPodSandbox's.
   */
  async stop(idOrPrefix: string, signal?: AbortSignal): Promise<void> {
    const found = this.find(idOrPrefix);
    if (!found) return;
    await this.locked(found.id, () => recordTimeline('StopPodSandbox', () => this.stopLocked(found.id, signal)));
  }

  private async stopLocked(id: string, signal?: AbortSignal): Promise<void> {
    const rec = this.o.repo.get(id);
    if (!rec || rec.state === 'removing') return;
    // A NOTREADY pod may still hold what an earlier release could not free.
    if (released(rec)) return;
    if (rec.state === 'creating') return; // its creation (holding the lock) failed and rolled back
    // CRI: StopPodSandbox stops every container of the pod (forcibly: kubelet has
    // already asked them to stop gracefully), while the network is released.
    await releasePod(this.teardown, rec, signal, () => this.o.containers.stopAll(rec.id));
    this.o.repo.update(rec.id, (cur) => ({
      state: 'notready',
      network: null,
      nsDir: null,
      ips: [],
      facts: { ...cur.facts, timeline: timelineSoFar(cur.facts.timeline) },
    }));
    this.o.log.info('pod sandbox stopped', { sandbox: rec.id });
  }

  /** Stops the pod if needed and removes everything of it; idempotent. */
  async remove(idOrPrefix: string, signal?: AbortSignal): Promise<void> {
    const found = this.find(idOrPrefix);
    if (!found) return;
    await this.locked(found.id, async () => {
      const rec = this.o.repo.get(found.id);
      if (!rec) return;
      // `removing` means released; so does a pod StopPodSandbox finished (the usual case).
      // A pod still holding its network and namespaces is released here, its containers
      // removed (not only stopped) before its network and namespaces go, and only here.
      const releasing = rec.state !== 'removing' && !released(rec);
      if (releasing) await releasePod(this.teardown, rec, signal, () => this.o.containers.removeAll(rec.id));
      if (rec.state !== 'removing') this.o.repo.update(rec.id, () => ({ state: 'removing' }));
      // Nothing of a released pod is in use: the containers an earlier release stopped and
      // the pod's dir go side by side. (Its namespaces went with its release.)
      await settleAll([releasing ? undefined : this.o.containers.removeAll(rec.id), rm(join(this.podRoot, rec.id), { recursive: true, force: true })]);
      // A container whose creation got past its pod's check before the pod became
      // `removing` may have a row by now, which keeps the pod's: it goes too.
      if (!this.o.repo.deleteIfNoContainers(rec.id)) {
        await this.o.containers.removeAll(rec.id);
        this.o.repo.delete(rec.id);
      }
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
          await this.rollBack(rec);
        } else if (rec.state === 'removing') {
          await this.remove(rec.id);
        } else if (rec.state === 'ready' && this.lostNamespaces(rec)) {
          // NOTREADY first, keeping what is recorded, so a failed release can be finished
          // by a later StopPodSandbox.
          this.o.repo.update(rec.id, () => ({ state: 'notready' }));
          this.o.log.warn('recovery: pod sandbox lost its namespaces (a reboot?); marked NOTREADY', { sandbox: rec.id });
          await releasePod(this.teardown, rec);
          this.o.repo.update(rec.id, () => ({ network: null, nsDir: null, ips: [] }));
        } else if (rec.state === 'ready' && sharesPid(rec)) {
          if (await this.infra.running(rec.id, this.o.runtimes.get(rec.runtimeHandler))) {
            this.watchInfra(rec.id);
          } else {
            this.o.repo.update(rec.id, () => ({ state: 'notready' }));
            this.o.log.warn('recovery: the infra process of a pod exited while berthd was down; pod sandbox marked NOTREADY', { sandbox: rec.id });
          }
        }
      } catch (err) {
        this.o.log.error('recovery of a pod sandbox failed; StopPodSandbox/RemovePodSandbox will retry', { sandbox: rec.id, error: messageOf(err) });
      }
    }
    const known = new Set(this.o.repo.list().map((r) => r.id));
    for (const stray of strayPodEntries({ nsRoot: this.nsRoot, podRoot: this.podRoot }, known)) {
      try {
        if (stray.kind === 'ns') await this.host.removeNamespaces(stray.path);
        else {
          await this.host.unmountShm(join(stray.path, 'shm'));
          await rm(stray.path, { recursive: true, force: true });
        }
        this.o.log.info('recovery: removed leftovers of an unknown pod sandbox', { path: stray.path });
      } catch (err) {
        this.o.log.error('recovery: could not remove leftovers', { path: stray.path, error: messageOf(err) });
      }
    }
  }

  /** Whether a ready pod is missing a namespace pin it should have. */
  private lostNamespaces(rec: SandboxRecord): boolean {
    if (rec.nsDir === null) return false;
    return pinnedKinds(rec.facts).some((k) => !this.host.isPinned(join(rec.nsDir!, k)));
  }

  /**
   * Follows a pod's infra process: when it exits, every process of the pod's PID
   * namespace is gone and none can join it, so a ready pod becomes NOTREADY (kubelet then
   * stops it and makes a new one). What it holds is released by StopPodSandbox.
   */
  private watchInfra(id: string): void {
    if (this.watching.has(id)) return;
    this.watching.add(id);
    this.infra
      .waitExit(id, this.lifetime.signal)
      .then((code) =>
        this.locked(id, async () => {
          const rec = this.o.repo.get(id);
          if (rec?.state !== 'ready') return;
          this.o.repo.update(id, () => ({ state: 'notready' }));
          this.o.log.warn('the infra process of a pod exited; pod sandbox marked NOTREADY', { sandbox: id, exit_code: code });
        }),
      )
      .catch((err: unknown) => {
        if (!this.lifetime.signal.aborted) this.o.log.error('lost track of a pod infra process', { sandbox: id, error: messageOf(err) });
      })
      .finally(() => this.watching.delete(id));
  }

  /** Stops creations in flight (shutdown) and waits, bounded, for their rollbacks. */
  async close(timeoutMs = 10_000): Promise<void> {
    this.lifetime.abort(new BerthError('Unavailable', 'berthd is shutting down'));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled([...this.creating.values()]), new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }

  /** Where the pod's files are (hosts, resolv.conf, hostname, shm); shown by verbose status. */
  podDir(id: string): string {
    return join(this.podRoot, id);
  }

  /**
   * What a container joining pod `idOrPrefix` is given: the paths of the pod's files and
   * pinned namespaces, the host's namespaces it uses, its cgroup parent and user namespace.
   */
  containerView(idOrPrefix: string): PodContainerView {
    const rec = this.requireSandbox(idOrPrefix);
    return containerViewOf(rec, this.podDir(rec.id));
  }

  /**
   * UpdatePodSandboxResources: records the pod's new overhead and resources. The pod's
   * cgroup is kubelet's (cgroup_parent), resized by it before this call; berth has no
   * pod-level cgroup of its own to change.
   */
  async updateResources(idOrPrefix: string, r: { overhead?: PodResources; resources?: PodResources }): Promise<void> {
    const found = this.requireSandbox(idOrPrefix);
    await this.locked(found.id, async () => {
      const rec = this.requireSandbox(found.id);
      this.o.repo.update(rec.id, (cur) => ({
        facts: { ...cur.facts, ...(r.overhead ? { overhead: r.overhead } : {}), ...(r.resources ? { resources: r.resources } : {}) },
      }));
      this.o.log.info('pod sandbox resources recorded', { sandbox: rec.id });
    });
  }
}
