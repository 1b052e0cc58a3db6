/**
 * Containers over one shim (conmon) each; see state.ts for the state machine. The
 * database row is written before anything is made (`creating`), every step of creation
 * defers its undo, and exits are learnt from the shim's exit files (exit-monitor.ts), so a
 * container that exits while berthd is down is recorded with its code when berthd is back.
 *
 * This file holds the lifecycle (create, start, stop, remove, recovery); the work of stop
 * and remove is container-teardown.ts; exec, attach, log reopening and resource updates
 * are container-io.ts, and this class hands them on.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { stageFile } from '../common/atomic-file.js';
import { nowNs } from '../common/clock.js';
import { recordTimeline, timelineSoFar } from '../common/timeline.js';
import { traced } from '../common/trace-points.js';
import { DisposableStack } from '../common/disposable.js';
import { settleAll } from '../common/settle-all.js';
import { findByIdOrPrefix } from '../common/id-prefix.js';
import { KeyedLock } from '../common/keyed-lock.js';
import { BerthError, messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { requireState, type RequireStateOptions } from '../common/require-record.js';
import type { BerthConfig } from '../config/schema.js';
import type { ImageRecord } from '../images/image-repository.js';
import type { ImageService } from '../images/image-service.js';
import type { OciRuntime, OciRuntimes } from '../oci/oci-runtime.js';
import type { SandboxService } from '../sandbox/sandbox-service.js';
import type { Shim, ShimHandle } from '../shim/shim.js';
import { containerDirs } from './container-dirs.js';
import { ContainerEvents } from './container-events.js';
import { overlayRootfs, type RootfsMounter } from './rootfs.js';
import { ContainerIo, type CriResources } from './container-io.js';
import { ContainerTeardown } from './container-teardown.js';
import type { ContainerRecord, ContainerRepository } from './container-repository.js';
import type { ExecSession } from './exec-session.js';
import { ExitMonitor } from './exit-monitor.js';
import { hostProbes, warnOnce, type HostProbes } from './host-probes.js';
import { podSpecView, targetPidns } from './pod-view.js';
import { containerLogPath } from './log-path.js';
import { containerFacts, specFacts, type RequestedImageSpec } from './container-facts.js';
import { generateSpec, type CriContainerConfig } from './spec.js';
import { IdFilesCache, localhostSeccompProfiles } from './spec-files.js';
import { specPrerequisites } from './spec-prerequisites.js';
import { ensureTraversable, planMounts, podIdmapOf, PreparedMounts, releasePreparedMounts } from './idmap.js';
import { applyCdiEdits, CdiRegistry } from './cdi.js';
import { ImageVolumes, planImageVolumes } from './image-volumes.js';
import type { ContainerState } from './state.js';

export { EXEC_OUTPUT_CAP } from './container-io.js';
export { overlayRootfs, type RootfsMounter } from './rootfs.js';

export interface CreateContainerRequest {
  sandboxId: string;
  name: string;
  attempt: number;
  image: string;
  /** The kubelet's log path relative to the pod's log directory. */
  logPath: string;
  config: CriContainerConfig;
  /** The request's ImageSpec besides the reference. */
  imageSpec: RequestedImageSpec;
  /** The ContainerConfig as kubelet sent it, kept for verbose ContainerStatus only. */
  raw: Record<string, unknown>;
}

export interface ContainerServiceOptions {
  config: BerthConfig;
  repo: ContainerRepository;
  sandboxes: SandboxService;
  images: ImageService;
  /** The configured OCI runtimes, by handler. */
  runtimes: OciRuntimes;
  shim: Shim;
  log: Logger;
  /** What the host can do; probed when absent. */
  host?: HostProbes;
  /** Mounts and unmounts the container's rootfs; {@link overlayRootfs} when absent. */
  rootfs?: RootfsMounter;
}

export class ContainerService {
  private readonly bundles: string;
  private readonly locks = new KeyedLock();
  private readonly host: HostProbes;
  private readonly idFiles = new IdFilesCache();
  /** CDI spec files, read again only when they change. */
  private readonly cdi: CdiRegistry;
  private readonly exits: ExitMonitor;
  private readonly io: ContainerIo;
  /** StopContainer's and RemoveContainer's work, and the retiring of exited containers. */
  private readonly teardown: ContainerTeardown;
  /** Lifecycle events, for GetContainerEvents. */
  readonly events: ContainerEvents;
  private readonly rootfs: RootfsMounter;

  constructor(private readonly o: ContainerServiceOptions) {
    this.rootfs = o.rootfs ?? overlayRootfs;
    this.cdi = new CdiRegistry(o.config.cdi.spec_dirs);
    this.bundles = containerDirs(o.config).bundles;
    mkdirSync(this.bundles, { recursive: true, mode: 0o700 });
    this.host = o.host ?? hostProbes();
    const runtimeOf = (c: { sandboxId: string }): OciRuntime => this.runtimeOf(c);
    const bundleOf = (id: string): string => this.paths(id).bundle;
    this.events = new ContainerEvents({
      snapshot: (sandboxId) => ({ sandbox: o.sandboxes.find(sandboxId), containers: o.repo.ofSandbox(sandboxId).filter((c) => c.state !== 'creating') }),
      queueSize: o.config.events.subscriber_queue_size,
    });
    const retire = (c: ContainerRecord): Promise<void> => this.teardown.retire(c);
    this.exits = new ExitMonitor({ repo: o.repo, shim: o.shim, runtimeOf, locks: this.locks, bundleOf, log: o.log, events: this.events, retire });
    this.teardown = new ContainerTeardown({
      repo: o.repo,
      images: o.images,
      shim: o.shim,
      rootfs: this.rootfs,
      exits: this.exits,
      log: o.log,
      events: this.events,
      runtimeOf,
      paths: (id) => this.paths(id),
      preparedDir: (id) => this.preparedDir(id),
    });
    this.io = new ContainerIo({
      repo: o.repo,
      shim: o.shim,
      runtimeOf,
      require: (idOrPrefix, opts) => this.requireContainer(idOrPrefix, opts),
      bundleOf,
    });
  }

  /** The runtime of a container: its pod's handler (the default one should the pod be gone). */
  private runtimeOf(c: { sandboxId: string }): OciRuntime {
    return this.o.runtimes.get(this.o.sandboxes.find(c.sandboxId)?.runtimeHandler ?? this.o.runtimes.defaultHandler);
  }

  private locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(id, fn);
  }

  find(idOrPrefix: string): ContainerRecord | undefined {
    return findByIdOrPrefix(
      idOrPrefix,
      (id) => this.o.repo.get(id),
      (prefix) => this.o.repo.idsWithPrefix(prefix),
    );
  }

  /**
   * The names of the image a container was created from (none once it is gone): what its
   * status reports of it, read without the image's config and layers.
   */
  imageNamesOf(c: ContainerRecord): Pick<ImageRecord, 'tags' | 'digests'> {
    return this.o.images.namesOf(c.imageId);
  }

  /**
   * The container `idOrPrefix` names, in one of `opts.states`: NotFound when there is
   * none (or it is still being created), FailedPrecondition naming its state otherwise.
   */
  requireContainer(idOrPrefix: string, opts: RequireStateOptions<ContainerState> = {}): ContainerRecord {
    return requireState('container', idOrPrefix, this.find(idOrPrefix), opts);
  }

  list(): ContainerRecord[] {
    return this.o.repo.list().filter((c) => c.state !== 'creating');
  }

  /** The OCI runtime spec a container was created with (its bundle's config.json); undefined when there is none. */
  async runtimeSpec(id: string): Promise<Record<string, unknown> | undefined> {
    try {
      return JSON.parse(await readFile(join(this.paths(id).bundle, 'config.json'), 'utf8')) as Record<string, unknown>;
    } catch {
      return undefined;
    }
  }

  /** Where idmap.ts prepares a container's mounts: apart from the bundle, which is removed recursively. */
  private preparedDir(id: string): string {
    return join(containerDirs(this.o.config).mounts, id);
  }

  private paths(id: string): { bundle: string; rootfs: string } {
    const bundle = join(this.bundles, id);
    return { bundle, rootfs: join(bundle, 'rootfs') };
  }

  /** Creates a container; its steps are recorded as the container's timeline (common/timeline.ts). */
  create(req: CreateContainerRequest, signal?: AbortSignal): Promise<string> {
    return recordTimeline('CreateContainer', () => this.createRecorded(req, signal));
  }

  private async createRecorded(req: CreateContainerRequest, signal?: AbortSignal): Promise<string> {
    const sandbox = this.o.sandboxes.requireSandbox(req.sandboxId, { states: ['ready'] });
    const image = await traced('berth:container.image', { image: req.image }, async () => this.o.images.find(req.image));
    if (!image) throw new BerthError('NotFound', `image "${req.image}" not found; pull it first`);
    // An image already found with a FIFO (or other non-regular) /etc/passwd or /etc/group is refused before anything is made.
    this.idFiles.get(image.id);
    const dup = this.o.repo.byName(sandbox.id, req.name, req.attempt);
    if (dup) throw new BerthError('AlreadyExists', `container "${req.name}" (attempt ${req.attempt}) already exists in pod ${sandbox.id} as ${dup.id}`);

    // Devices, host devices and LSM profiles: resolved before anything of the container exists.
    const prereq = await specPrerequisites(req.config, this.host, this.cdi);
    // User namespaces and recursive read-only mounts (idmap.ts): checked before anything is made.
    const pod = this.o.sandboxes.containerView(sandbox.id);
    const podIdmap = podIdmapOf(pod);
    const plans = planMounts(req.config.mounts, podIdmap);
    // Image volumes (image-volumes.ts): checked, and their images found, before anything is made.
    const volumePlans = planImageVolumes(req.config.mounts, { images: this.o.images });

    const id = randomBytes(32).toString('hex');
    const logPath = containerLogPath(pod.logDirectory, req.logPath) ?? join(this.bundles, id, 'container.log');
    const { bundle, rootfs } = this.paths(id);
    const rt = this.o.runtimes.get(sandbox.runtimeHandler);
    this.o.repo.insert({
      id,
      sandboxId: sandbox.id,
      name: req.name,
      attempt: req.attempt,
      imageId: image.id,
      imageRef: req.image,
      facts: containerFacts(req.config, req.imageSpec),
      request: req.raw,
      logPath,
      createdAt: nowNs(),
    });
    const undo = new DisposableStack();
    // The shim starts first and waits for the bundle (ShimCreateOptions.bundleReady), so its
    // start-up overlaps the making of the bundle. Each undo is registered before its step;
    // on failure they run newest first: shim, mount, bundle, layer.
    let bundleDone = (): void => undefined;
    let bundleFailed = (_err: unknown): void => undefined;
    let shimCreated: Promise<ShimHandle> | undefined;
    let mountTried = false;
    let mounted: Promise<unknown> | undefined;
    /** config.json's write under its temp name: settled before the undo removes the bundle. */
    let staged: Promise<unknown> | undefined;
    try {
      undo.defer(() => this.o.images.removeContainerLayer(id));
      undo.defer(() => rm(bundle, { recursive: true, force: true }));
      // Mounts runc cannot make, prepared by idmap.ts; released after the rootfs that may sit on them.
      const prepared = new PreparedMounts(this.preparedDir(id), podIdmap);
      undo.defer(() => releasePreparedMounts(prepared.dir));
      undo.defer(() => (mountTried ? this.rootfs.unmount(rootfs) : undefined));
      undo.defer(() => this.o.shim.removeFiles({ id, bundle }));
      undo.defer(() => rt.delete(id, true));
      // The shim traces its own create (berth:shim.create).
      shimCreated = this.o.shim.create({
        id,
        bundle,
        runtime: rt,
        logPath,
        terminal: req.config.tty,
        stdin: req.config.stdin,
        stdinOnce: req.config.stdin_once,
        bundleReady: new Promise<void>((resolve, reject) => {
          bundleDone = resolve;
          bundleFailed = reject;
        }),
        ...(signal ? { signal } : {}),
      });
      shimCreated.catch(() => undefined);
      const layerMade = traced('berth:container.snapshot', { containerId: id }, () => this.o.images.prepareContainerLayer(id, image));
      const rootfsMade = mkdir(rootfs, { recursive: true, mode: 0o755 });
      await Promise.allSettled([layerMade, rootfsMade]);
      const [layer] = await Promise.all([layerMade, rootfsMade]);
      const rootfsOptions = await prepared.rootfsOptions(layer.options);
      await prepared.mounts(plans);
      // Image volumes: recorded and mounted under prepared.dir, released with it (deferred above).
      const volumes = new ImageVolumes(prepared.dir, this.o.images, podIdmap?.usernsPath);
      await volumes.mount(id, volumePlans);
      if (podIdmap) await ensureTraversable([join(rootfs, 'x'), join(prepared.dir, 'x')], [this.o.config.root, this.o.config.state]);
      mountTried = true;
      mounted = this.rootfs.mount(rootfs, rootfsOptions).catch((err: unknown) => {
        throw new BerthError('Internal', `mounting the container's rootfs (overlay on ${rootfs}): ${messageOf(err)}`, { cause: err });
      });
      mounted.catch(() => undefined);
      // The spec is made while the mount runs when the image's passwd and group are known;
      // else they are read from the mounted rootfs, which refuses an image whose passwd or
      // group is no regular file (spec-files.ts) before the runtime sees the bundle.
      let ids = this.idFiles.get(image.id);
      if (!ids) {
        await mounted;
        ids = await this.idFiles.read(image.id, rootfs);
      }

      const { spec, warnings, hostWarnings } = await traced('berth:container.spec', { containerId: id }, async () => {
        const made = generateSpec({
          containerId: id,
          sandboxId: sandbox.id,
          config: volumes.applyToMounts(req.config),
          image: image.config,
          passwd: ids.passwd,
          group: ids.group,
          rootfs,
          sandbox: podSpecView(pod),
          cgroupDriver: this.o.config.cgroup_driver,
          minOomScoreAdj: this.host.minOomScoreAdj,
          ...prereq,
          ...(this.host.hostCapabilities ? { hostCapabilities: this.host.hostCapabilities } : {}),
          localhostSeccomp: await localhostSeccompProfiles(req.config),
          ...targetPidns(sandbox.id, req.config, (id) => this.find(id)),
        });
        const edited = applyCdiEdits(made.spec, prereq.cdi);
        prepared.applyToSpec(edited, req.config.mounts);
        return { ...made, spec: edited };
      });
      for (const w of warnings) this.o.log.warn('container spec adjusted', { container: id, warning: w });
      for (const w of hostWarnings) warnOnce(this.o.log, w, { container: id });
      // config.json is written while the mount runs, under a temp name, and comes last,
      // whole (by rename): should berthd die before, the start pipe's end of file releases
      // conmon on a bundle without one, and `runc create` fails. No fsync: it matters only
      // while the container can exist, and a power cut ends that (the runtime's state is on
      // tmpfs); a kill -9 leaves it whole, as the page cache survives.
      const staging = stageFile(join(bundle, 'config.json'), JSON.stringify(spec), 0o600, { sync: false });
      staged = staging;
      staging.catch(() => undefined);
      const [, config] = await Promise.all([mounted, staging]);
      await config.commit();
      bundleDone();
      const handle = await shimCreated;
      // One transaction: the state, the facts only the spec says (a row still `creating`
      // after a crash is removed by recovery, so they are needed only from here on), and the
      // timeline, kept with the facts so that it outlives a restart of berthd.
      this.o.repo.update(id, (cur) => ({
        state: 'created',
        pid: handle.pid,
        shimPid: handle.shimPid,
        facts: { ...specFacts(spec as unknown as Record<string, unknown>), timeline: timelineSoFar(cur.facts.timeline) },
      }));
      undo.move();
      this.events.publish('created', { id, sandboxId: sandbox.id });
      return id;
    } catch (err) {
      // The shim first gives up (its process killed) or finishes; then everything is undone.
      bundleFailed(err);
      await Promise.allSettled([shimCreated, mounted, staged]);
      try {
        await undo.dispose();
        this.o.repo.delete(id);
      } catch (e) {
        this.o.log.error('rollback of a failed container creation was incomplete; RemoveContainer or recovery will finish it', {
          container: id,
          error: messageOf(e),
        });
      }
      throw err;
    }
  }

  /** Starts a created container; its steps are added to the container's timeline. */
  start(idOrPrefix: string): Promise<void> {
    return recordTimeline('StartContainer', () => this.startRecorded(idOrPrefix));
  }

  private async startRecorded(idOrPrefix: string): Promise<void> {
    const found = this.requireContainer(idOrPrefix);
    await this.locked(found.id, async () => {
      const c = requireState('container', idOrPrefix, this.o.repo.get(found.id), {
        states: ['created', 'running'],
        refusal: '; only a created container can be started',
      });
      // Running already: an earlier start went through (its answer lost); a retry succeeds.
      if (c.state === 'running') return;
      try {
        await this.runtimeOf(c).start(c.id);
      } catch (err) {
        // An earlier StartContainer, cut off by a restart, may have started it in the runtime.
        if (await this.exits.adoptIfRunning(c)) return;
        throw err;
      }
      this.o.repo.update(c.id, (cur) => ({ state: 'running', startedAt: nowNs(), facts: { timeline: timelineSoFar(cur.facts.timeline) } }));
      this.events.publish('started', c);
      this.exits.watch(c.id);
    });
  }

  /** Stop signal, up to `timeoutSeconds`, then SIGKILL; idempotent (CRI: stopping a stopped container succeeds). */
  async stop(idOrPrefix: string, timeoutSeconds: number, signal?: AbortSignal): Promise<void> {
    const found = this.requireContainer(idOrPrefix);
    await this.locked(found.id, () => this.teardown.stop(found.id, timeoutSeconds, signal));
  }

  /** Removes a container and everything of it; a running one is killed first. Idempotent. */
  async remove(idOrPrefix: string): Promise<void> {
    const found = this.find(idOrPrefix);
    if (!found) return;
    if (found.state === 'running' || found.state === 'created') await this.stop(found.id, 0);
    await this.locked(found.id, () => this.teardown.remove(found.id));
  }

  /** ExecSync; see {@link ContainerIo.execSync}. */
  execSync(idOrPrefix: string, cmd: string[], timeoutSeconds: number, signal?: AbortSignal): Promise<{ stdout: Buffer; stderr: Buffer; exitCode: number }> {
    return this.io.execSync(idOrPrefix, cmd, timeoutSeconds, signal);
  }

  /** The streaming Exec; see {@link ContainerIo.openExec}. */
  openExec(idOrPrefix: string, cmd: string[], opts: { tty: boolean; stdin: boolean }): Promise<ExecSession> {
    return this.io.openExec(idOrPrefix, cmd, opts);
  }

  /** The streaming Attach; see {@link ContainerIo.openAttach}. */
  openAttach(idOrPrefix: string, opts: { stdin: boolean }): ExecSession {
    return this.io.openAttach(idOrPrefix, opts);
  }

  /** ReopenContainerLog; see {@link ContainerIo.reopenLog}. */
  reopenLog(idOrPrefix: string): Promise<void> {
    return this.io.reopenLog(idOrPrefix);
  }

  /** UpdateContainerResources; see {@link ContainerIo.updateResources}. */
  updateResources(idOrPrefix: string, r: CriResources): Promise<void> {
    return this.io.updateResources(idOrPrefix, r);
  }

  /** Stops every container of a pod (StopPodSandbox), lost (`unknown`) ones too, as containerd does. */
  async stopAll(sandboxId: string): Promise<void> {
    const live = this.o.repo.ofSandbox(sandboxId).filter((c) => c.state === 'running' || c.state === 'created' || c.state === 'unknown');
    await settleAll(live.map((c) => this.stop(c.id, 0)));
  }

  /** Removes every container of a pod (RemovePodSandbox), side by side: each has its own lock and its own things. */
  async removeAll(sandboxId: string): Promise<void> {
    await settleAll(this.o.repo.ofSandbox(sandboxId).map((c) => this.remove(c.id)));
  }

  /**
   * Recovery: `creating` and `removing` rows are finished by removing them; created and
   * running containers are reconciled with their exit files and the runtime, and
   * followed again (see {@link ExitMonitor.reconcile}).
   */
  async recover(): Promise<void> {
    this.events.beginRecovery();
    try {
      await this.recoverEach();
    } finally {
      this.events.endRecovery();
    }
  }

  private async recoverEach(): Promise<void> {
    for (const c of this.o.repo.list()) {
      try {
        if (c.state === 'creating') await this.abandonCreate(c);
        if (c.state === 'creating' || c.state === 'removing') {
          await this.remove(c.id);
          continue;
        }
        if (c.facts.user === null && c.facts.stopSignal === null) await this.completeFacts(c.id);
        if (c.state === 'running' || c.state === 'created') await this.exits.reconcile(c);
      } catch (err) {
        this.o.log.error('recovery of a container failed', { container: c.id, error: messageOf(err) });
        // Followed all the same: the exit file, or the runtime once the shim is gone.
        if (c.state === 'running') this.exits.watch(c.id);
      }
    }
  }

  /**
   * Rows written before containers had typed facts (migration 6) lack what only the OCI
   * spec says (user, stop signal): read once from the bundle, when it is still there.
   */
  private async completeFacts(id: string): Promise<void> {
    const spec = await this.runtimeSpec(id);
    if (spec) this.o.repo.updateFacts(id, () => specFacts(spec));
  }

  /** A create cut off by a restart: its shim is killed, its runtime `create` awaited, then deleted (remove deletes again). */
  private async abandonCreate(c: ContainerRecord): Promise<void> {
    await this.o.shim.abandon({ id: c.id, bundle: this.paths(c.id).bundle });
    await this.runtimeOf(c).delete(c.id, true);
  }

  close(): void {
    this.exits.close();
    this.events.close();
  }
}
