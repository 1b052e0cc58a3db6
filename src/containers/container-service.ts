/**
 * Containers over one shim (conmon) each; see state.ts for the state machine. The
 * database row is written before anything is made (`creating`), every step of creation
 * defers its undo, and exits are learnt from conmon's exit files, so a container that
 * exits while berthd is down is recorded with its code when berthd is back.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { dirname, join } from 'node:path';
import { nowNs } from '../common/clock.js';
import { DisposableStack } from '../common/disposable.js';
import { findByIdOrPrefix } from '../common/id-prefix.js';
import { KeyedLock } from '../common/keyed-lock.js';
import { BerthError, errnoOf, messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { mount, umount } from '../common/mount.js';
import { execProcess, spawnProcess } from '../common/process.js';
import type { BerthConfig } from '../config/schema.js';
import type { ImageRecord } from '../images/image-repository.js';
import type { ImageService } from '../images/image-service.js';
import { ociRuntime, ownOomScoreAdj, type OciRuntime } from '../oci/runtime.js';
import type { SandboxRecord } from '../sandbox/sandbox-repository.js';
import type { SandboxService } from '../sandbox/sandbox-service.js';
import { shimDirs, type Shim, type ShimHandle } from '../shim/shim.js';
import type { ContainerRecord, ContainerRepository } from './container-repository.js';
import { capabilitiesFromMask } from './capabilities.js';
import { descendants, killQuietly, startAttachSession, startExecSession, type ExecSession } from './exec-session.js';
import { hostProbes, warnOnce } from './host-probes.js';
import { effectiveStopSignal } from './signals.js';
import { generateSpec, type CriContainerConfig } from './spec.js';
import { specPrerequisites } from './spec-prerequisites.js';
import { ensureTraversable, planMounts, podIdmapOf, PreparedMounts, releasePreparedMounts } from './idmap.js';
import { applyCdiEdits, CdiRegistry } from './cdi.js';
import { ImageVolumes, planImageVolumes } from './image-volumes.js';

export interface CreateContainerRequest {
  sandboxId: string;
  name: string;
  attempt: number;
  image: string;
  /** The kubelet's log path relative to the pod's log directory. */
  logPath: string;
  config: CriContainerConfig;
  /** The ContainerConfig as kubelet sent it, kept for ContainerStatus. */
  raw: Record<string, unknown>;
}

export interface ContainerServiceOptions {
  config: BerthConfig;
  repo: ContainerRepository;
  sandboxes: SandboxService;
  images: ImageService;
  shim: Shim;
  log: Logger;
}

/** Bytes of each output stream ExecSync keeps. */
export const EXEC_OUTPUT_CAP = (16 * 1024 * 1024) / 4;
/** How often the shims of followed containers are checked, and a container whose shim died is asked about. */
const SHIM_CHECK_MS = 2000;
/** Bytes of /etc/passwd or /etc/group berth reads from an image. */
const MAX_ID_FILE = 1 << 20;
/** Images whose passwd and group are kept, and the most bytes kept for one. */
const ID_FILES_CACHE_ENTRIES = 64;
const ID_FILES_CACHED_MAX = 64 * 1024;

interface IdFiles {
  passwd: string;
  group: string;
}

export class ContainerService {
  private readonly bundles: string;
  private readonly exitDir: string;
  private readonly socketDir: string;
  private readonly persistRoot: string;
  private readonly lifetime = new AbortController();
  private readonly watching = new Map<string, Promise<void>>();
  /** Shims of followed containers, checked together by one timer: aborted when a shim is gone. */
  private readonly shims = new Map<string, { pid: number | null; gone: AbortController }>();
  private shimCheck: NodeJS.Timeout | undefined;
  private readonly locks = new KeyedLock();
  private readonly minOomScoreAdj: number;
  private readonly hostCapabilities: string[] | undefined;
  /**
   * /etc/passwd and /etc/group of images, by image id (a config digest, so fixed content):
   * with them known, a container's spec need not wait for its rootfs mount.
   */
  private readonly idFiles = new Map<string, IdFiles>();
  /** CDI spec files, read again only when they change. */
  private readonly cdi: CdiRegistry;

  constructor(private readonly o: ContainerServiceOptions) {
    this.cdi = new CdiRegistry(o.config.cdi.spec_dirs);
    this.bundles = join(o.config.root, 'containers');
    ({ exitDir: this.exitDir, socketDir: this.socketDir, persistRoot: this.persistRoot } = shimDirs(o.config.state));
    for (const d of [this.bundles, this.exitDir, this.socketDir, this.persistRoot]) mkdirSync(d, { recursive: true, mode: 0o700 });
    this.minOomScoreAdj = ownOomScoreAdj();
    const capBnd = /^CapBnd:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
    this.hostCapabilities = capBnd ? capabilitiesFromMask(BigInt(`0x${capBnd}`)) : undefined;
  }

  private runtime(handler: string): OciRuntime {
    return ociRuntime(this.o.config, handler);
  }

  /** The runtime of a container: its pod's handler (the default one should the pod be gone). */
  private runtimeOf(c: { sandboxId: string }): OciRuntime {
    return this.runtime(this.o.sandboxes.find(c.sandboxId)?.runtimeHandler ?? this.o.config.default_runtime);
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

  /** The image a container was created from, while it is still present. */
  imageOf(c: ContainerRecord): ImageRecord | undefined {
    return this.o.images.find(c.imageId);
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
    return join(this.o.config.state, 'mounts', id);
  }

  private paths(id: string): { bundle: string; rootfs: string; persist: string } {
    const bundle = join(this.bundles, id);
    return { bundle, rootfs: join(bundle, 'rootfs'), persist: join(this.persistRoot, id) };
  }

  async create(req: CreateContainerRequest, signal?: AbortSignal): Promise<string> {
    const sandbox = this.o.sandboxes.find(req.sandboxId);
    if (!sandbox || sandbox.state === 'creating') throw new BerthError('NotFound', `pod sandbox "${req.sandboxId}" not found`);
    if (sandbox.state !== 'ready') throw new BerthError('FailedPrecondition', `pod sandbox ${sandbox.id} is ${sandbox.state}, not ready`);
    const image = this.o.images.find(req.image);
    if (!image) throw new BerthError('NotFound', `image "${req.image}" not found; pull it first`);
    const dup = this.o.repo.byName(sandbox.id, req.name, req.attempt);
    if (dup) throw new BerthError('AlreadyExists', `container "${req.name}" (attempt ${req.attempt}) already exists in pod ${sandbox.id} as ${dup.id}`);

    // Devices, host devices and LSM profiles: resolved before anything of the container exists.
    const prereq = await specPrerequisites(req.config, hostProbes(), this.cdi);
    // User namespaces and recursive read-only mounts (idmap.ts): checked before anything is made.
    const podIdmap = podIdmapOf(sandbox);
    const plans = planMounts(req.config.mounts, podIdmap);
    // Image volumes (image-volumes.ts): checked, and their images found, before anything is made.
    const volumePlans = planImageVolumes(req.config.mounts, { images: this.o.images });

    const id = randomBytes(32).toString('hex');
    const logDir = (sandbox.config as { log_directory?: string }).log_directory ?? '';
    const logPath = logDir !== '' && req.logPath !== '' ? join(logDir, req.logPath) : join(this.bundles, id, 'container.log');
    const { bundle, rootfs, persist } = this.paths(id);
    const rt = this.runtime(sandbox.runtimeHandler);
    this.o.repo.insert({
      id,
      sandboxId: sandbox.id,
      name: req.name,
      attempt: req.attempt,
      imageId: image.id,
      imageRef: req.image,
      config: req.raw,
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
    try {
      undo.defer(() => this.o.images.removeContainerLayer(id));
      undo.defer(() => rm(bundle, { recursive: true, force: true }));
      // Mounts runc cannot make, prepared by idmap.ts; released after the rootfs that may sit on them.
      const prepared = new PreparedMounts(this.preparedDir(id), podIdmap);
      undo.defer(() => releasePreparedMounts(prepared.dir));
      undo.defer(() => (mountTried ? unmount(rootfs) : undefined));
      undo.defer(() => this.o.shim.removeFiles({ id, bundle, exitDir: this.exitDir, persistDir: persist, socketDir: this.socketDir }));
      undo.defer(() => this.o.shim.delete(id, rt.path, rt.root, true));
      shimCreated = this.o.shim.create({
        id,
        bundle,
        runtimePath: rt.path,
        runtimeRoot: rt.root,
        logPath,
        exitDir: this.exitDir,
        persistDir: persist,
        socketDir: this.socketDir,
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
      const layerMade = this.o.images.prepareContainerLayer(id, image);
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
      mounted = mount('overlay', rootfs, 'overlay', 0, rootfsOptions).catch((err: unknown) => {
        throw new BerthError('Internal', `mounting the container's rootfs (overlay on ${rootfs}): ${messageOf(err)}`, { cause: err });
      });
      mounted.catch(() => undefined);
      // The spec is made while the mount runs when the image's passwd and group are known.
      let ids = this.idFiles.get(image.id);
      if (!ids) {
        await mounted;
        ids = await this.readIdFiles(image.id, rootfs);
      }

      const {
        spec: generated,
        warnings,
        hostWarnings,
      } = generateSpec({
        containerId: id,
        sandboxId: sandbox.id,
        config: volumes.applyToMounts(req.config),
        image: image.config,
        passwd: ids.passwd,
        group: ids.group,
        rootfs,
        sandbox: this.sandboxInfo(sandbox),
        cgroupDriver: this.o.config.cgroup_driver,
        minOomScoreAdj: this.minOomScoreAdj,
        ...prereq,
        ...(this.hostCapabilities ? { hostCapabilities: this.hostCapabilities } : {}),
        localhostSeccomp: await localhostSeccompProfiles(req.config),
        ...this.targetPidns(sandbox.id, req.config),
      });
      const spec = applyCdiEdits(generated, prereq.cdi);
      prepared.applyToSpec(spec, req.config.mounts);
      for (const w of warnings) this.o.log.warn('container spec adjusted', { container: id, warning: w });
      for (const w of hostWarnings) warnOnce(this.o.log, w, { container: id });
      await writeFile(join(bundle, 'config.json'), JSON.stringify(spec), { mode: 0o600 });
      await mounted;
      bundleDone();
      const handle = await shimCreated;
      this.o.repo.update(id, () => ({ state: 'created', pid: handle.pid, shimPid: handle.shimPid }));
      undo.move();
      return id;
    } catch (err) {
      // The shim first gives up (its process killed) or finishes; then everything is undone.
      bundleFailed(err);
      await Promise.allSettled([shimCreated, mounted]);
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

  /**
   * For namespace_options.pid TARGET (ephemeral debug containers, `kubectl debug
   * --target`): the PID namespace of a running container of the same pod.
   */
  private targetPidns(sandboxId: string, cfg: CriContainerConfig): { targetPidnsPath?: string } {
    const opts = cfg.linux?.security_context?.namespace_options;
    if (opts?.pid !== 'TARGET' || !opts.target_id) return {};
    const target = this.find(opts.target_id);
    if (!target || target.state === 'creating' || target.sandboxId !== sandboxId) {
      throw new BerthError('NotFound', `namespace_options.target_id: container "${opts.target_id}" not found in pod ${sandboxId}`);
    }
    if (target.state !== 'running' || !target.pid)
      throw new BerthError('FailedPrecondition', `namespace_options.target_id: container ${target.id} is ${target.state}, not running`);
    return { targetPidnsPath: `/proc/${target.pid}/ns/pid` };
  }

  /** An image's passwd and group, read through a container's freshly mounted rootfs; small ones are kept. */
  private async readIdFiles(imageId: string, rootfs: string): Promise<IdFiles> {
    const [passwd, group] = await Promise.all([readBounded(rootfs, 'etc/passwd'), readBounded(rootfs, 'etc/group')]);
    if (passwd.length + group.length <= ID_FILES_CACHED_MAX) {
      if (this.idFiles.size >= ID_FILES_CACHE_ENTRIES) this.idFiles.delete(this.idFiles.keys().next().value!);
      this.idFiles.set(imageId, { passwd, group });
    }
    return { passwd, group };
  }

  private sandboxInfo(sb: SandboxRecord): Parameters<typeof generateSpec>[0]['sandbox'] {
    const cfg = sb.config as {
      hostname?: string;
      linux?: { cgroup_parent?: string; security_context?: { namespace_options?: { network?: string; ipc?: string; pid?: string } } };
    };
    const ns = cfg.linux?.security_context?.namespace_options ?? {};
    const podDir = this.o.sandboxes.podDir(sb.id);
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

  async start(idOrPrefix: string): Promise<void> {
    const found = this.find(idOrPrefix);
    if (!found || found.state === 'creating') throw new BerthError('NotFound', `container "${idOrPrefix}" not found`);
    await this.locked(found.id, async () => {
      const c = this.o.repo.get(found.id)!;
      if (c.state !== 'created') throw new BerthError('FailedPrecondition', `container ${c.id} is ${c.state}; only a created container can be started`);
      const rt = this.runtimeOf(c);
      await this.o.shim.start(c.id, rt.path, rt.root);
      this.o.repo.update(c.id, () => ({ state: 'running', startedAt: nowNs() }));
      this.watch(c.id);
    });
  }

  /** Follows a container's exit file and records the exit when it comes (see {@link followExit}). */
  private watch(id: string): void {
    if (this.watching.has(id)) return;
    const p = this.followExit(id)
      .catch((err: unknown) => {
        if (!this.lifetime.signal.aborted) this.o.log.error('lost track of a container exit', { container: id, error: messageOf(err) });
      })
      .finally(() => this.watching.delete(id));
    this.watching.set(id, p);
  }

  /**
   * Waits for a container's exit file and records the exit. Should its shim die
   * first (kill -9 of conmon), no exit file will come: the runtime is asked instead, and
   * once it says the container stopped, the container becomes `unknown` with a message,
   * its exit code having died with the shim. It is never left RUNNING when it is not.
   */
  private async followExit(id: string): Promise<void> {
    const lifetime = this.lifetime.signal;
    const shimPid = this.o.repo.get(id)?.shimPid ?? null;
    const shimGone = new AbortController();
    this.shims.set(id, { pid: shimPid, gone: shimGone });
    this.shimCheck ??= setInterval(() => this.checkShims(), SHIM_CHECK_MS).unref();
    try {
      return await this.recordExit(id, await this.o.shim.waitExit(this.exitDir, id, AbortSignal.any([lifetime, shimGone.signal])));
    } catch (err) {
      if (lifetime.aborted || !shimGone.signal.aborted) throw err;
    } finally {
      this.shims.delete(id);
      if (this.shims.size === 0) {
        clearInterval(this.shimCheck);
        this.shimCheck = undefined;
      }
    }
    this.o.log.warn('the shim of a running container died; following the container through the runtime', { container: id, shim_pid: shimPid });
    for (;;) {
      // The shim may have written the exit file just before it went.
      const code = await this.o.shim.exitCode(this.exitDir, id);
      if (code !== undefined) return this.recordExit(id, code);
      const c = this.o.repo.get(id);
      if (c?.state !== 'running' && c?.state !== 'created') return;
      const rt = this.runtimeOf(c);
      const st = await this.o.shim.state(id, rt.path, rt.root).catch((err: unknown) => {
        this.o.log.debug('runtime state failed; asking again', { container: id, error: messageOf(err) });
        return { status: 'unknown', pid: 0 } as const;
      });
      if (!st || st.status === 'stopped') {
        return this.locked(id, async () => {
          const cur = this.o.repo.get(id);
          if (cur?.state !== 'running' && cur?.state !== 'created') return;
          const late = await this.o.shim.exitCode(this.exitDir, id);
          if (late !== undefined) return this.recordExit(id, late);
          this.o.repo.update(id, () => ({
            state: 'unknown',
            reason: 'Unknown',
            message: `its shim (pid ${shimPid ?? '?'}) died, then the container stopped: the exit code is unknown`,
            finishedAt: nowNs(),
            pid: 0,
          }));
          this.o.log.warn('container stopped without its shim; exit code unknown', { container: id });
        });
      }
      await new Promise((r) => setTimeout(r, SHIM_CHECK_MS).unref());
      if (lifetime.aborted) return;
    }
  }

  /** One pass over the followed containers' shims: a dead one stops the wait for its exit file. */
  private checkShims(): void {
    for (const [id, s] of this.shims) if (!shimAlive(s.pid, id)) s.gone.abort();
  }

  /** Marks a container exited with its code; idempotent. */
  private async recordExit(id: string, code: number): Promise<void> {
    const c = this.o.repo.get(id);
    if (!c || c.state === 'exited' || c.state === 'removing') return;
    const oom = existsSync(join(this.paths(id).persist, 'oom')) || existsSync(join(this.paths(id).bundle, 'oom'));
    const reason = oom ? 'OOMKilled' : code === 0 ? 'Completed' : 'Error';
    this.o.repo.update(id, () => ({ state: 'exited', exitCode: code, reason, finishedAt: nowNs(), pid: 0 }));
    this.o.log.info('container exited', { container: id, exit_code: code, reason });
  }

  /** Stop signal, up to `timeoutSeconds`, then SIGKILL; idempotent (CRI: stopping a stopped container succeeds). */
  async stop(idOrPrefix: string, timeoutSeconds: number, signal?: AbortSignal): Promise<void> {
    const found = this.find(idOrPrefix);
    if (!found || found.state === 'creating') throw new BerthError('NotFound', `container "${idOrPrefix}" not found`);
    await this.locked(found.id, async () => {
      const c = this.o.repo.get(found.id)!;
      if (c.state === 'exited' || c.state === 'removing') return;
      const rt = this.runtimeOf(c);
      if (c.state === 'unknown') return this.stopLost(c, rt);
      const image = this.o.images.find(c.imageId);
      // ContainerConfig.stop_signal, else the image's; an unusable image signal falls back to SIGTERM.
      const stopSig = effectiveStopSignal(c.config, image?.config);
      if (stopSig.warning) this.o.log.warn('stop signal', { container: c.id, warning: stopSig.warning });
      const sig = stopSig.signal;
      // Without its shim (killed) no exit file will come: ask the runtime instead.
      const shimUp = shimAlive(c.shimPid, c.id);
      const exited = (ms: number): Promise<number | undefined> => (shimUp ? this.exitWithin(c.id, ms, signal) : this.stoppedWithin(c.id, rt, ms));
      if (c.state === 'running' && timeoutSeconds > 0) {
        await this.o.shim.kill(c.id, sig, rt.path, rt.root).catch(() => undefined);
        const code = await exited(timeoutSeconds * 1000);
        if (code !== undefined) return this.recordExit(c.id, code);
      }
      await this.o.shim.kill(c.id, 'KILL', rt.path, rt.root, true).catch(() => undefined);
      const code = await exited(10_000);
      if (code !== undefined) return this.recordExit(c.id, code);
      // Never started (no shim exit for a created container that got killed before start
      // on some runtimes), or the shim is gone: record it as killed.
      return this.recordExit(c.id, 137);
    });
  }

  /**
   * StopContainer of an `unknown` container (its shim and its runtime state were lost):
   * as containerd does, it becomes EXITED with the unknown exit code 255, keeping its
   * reason and message, without waiting for a timeout. Should the runtime still know a
   * live process of it, that is killed first.
   */
  private async stopLost(c: ContainerRecord, rt: { path: string; root: string }): Promise<void> {
    const UNKNOWN_EXIT_CODE = 255;
    const st = await this.o.shim.state(c.id, rt.path, rt.root);
    if (st && st.status !== 'stopped') {
      await this.o.shim.kill(c.id, 'KILL', rt.path, rt.root, true).catch(() => undefined);
      if ((await this.stoppedWithin(c.id, rt, 10_000)) === undefined)
        throw new BerthError('Internal', `container ${c.id}: the runtime still reports it ${st.status} after SIGKILL`);
    }
    this.o.repo.update(c.id, (cur) => ({
      state: 'exited',
      exitCode: UNKNOWN_EXIT_CODE,
      finishedAt: BigInt(cur.finishedAt) > 0n ? cur.finishedAt : nowNs(),
      pid: 0,
    }));
    this.o.log.info('lost container stopped', { container: c.id, exit_code: UNKNOWN_EXIT_CODE, reason: c.reason });
  }

  /** For a container whose shim is gone: waits until the runtime says it stopped; 137 (killed) then. */
  private async stoppedWithin(id: string, rt: { path: string; root: string }, ms: number): Promise<number | undefined> {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      const st = await this.o.shim.state(id, rt.path, rt.root).catch(() => undefined);
      if (!st || st.status === 'stopped') return 137;
      await new Promise((r) => setTimeout(r, 50));
    }
    return undefined;
  }

  private async exitWithin(id: string, ms: number, outer?: AbortSignal): Promise<number | undefined> {
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(new BerthError('DeadlineExceeded', 'stop timeout')), ms);
    const onOuter = (): void => ac.abort(outer!.reason);
    outer?.addEventListener('abort', onOuter, { once: true });
    try {
      return await this.o.shim.waitExit(this.exitDir, id, ac.signal);
    } catch {
      if (outer?.aborted) throw outer.reason;
      return undefined;
    } finally {
      clearTimeout(t);
      outer?.removeEventListener('abort', onOuter);
    }
  }

  /** Removes a container and everything of it; a running one is killed first. Idempotent. */
  async remove(idOrPrefix: string): Promise<void> {
    const found = this.find(idOrPrefix);
    if (!found) return;
    if (found.state === 'running' || found.state === 'created') await this.stop(found.id, 0);
    await this.locked(found.id, async () => {
      const c = this.o.repo.get(found.id);
      if (!c) return;
      this.o.repo.update(c.id, () => ({ state: 'removing' }));
      const rt = this.runtimeOf(c);
      const { bundle, rootfs, persist } = this.paths(c.id);
      await this.o.shim.delete(c.id, rt.path, rt.root, true);
      await unmount(rootfs);
      // Idmapped and image-volume mounts; the image volumes' use rows go with the container's row.
      await releasePreparedMounts(this.preparedDir(c.id));
      await this.o.images.removeContainerLayer(c.id);
      await this.o.shim.removeFiles({ id: c.id, bundle, exitDir: this.exitDir, persistDir: persist, socketDir: this.socketDir });
      await rm(bundle, { recursive: true, force: true });
      this.o.repo.delete(c.id);
    });
  }

  /**
   * Runs a command in a running container and returns its output and exit code
   * (kubelet's exec probes). Each stream is capped at {@link EXEC_OUTPUT_CAP} bytes; more
   * is discarded. On timeout (or the caller going away) the exec'd process itself is
   * killed, not only the `runc exec` client, and DeadlineExceeded is thrown.
   */
  async execSync(
    idOrPrefix: string,
    cmd: string[],
    timeoutSeconds: number,
    signal?: AbortSignal,
  ): Promise<{ stdout: Buffer; stderr: Buffer; exitCode: number }> {
    const c = this.find(idOrPrefix);
    if (!c || c.state === 'creating') throw new BerthError('NotFound', `container "${idOrPrefix}" not found`);
    if (c.state !== 'running') throw new BerthError('FailedPrecondition', `container ${c.id} is ${c.state}, not running`);
    const rt = this.runtimeOf(c);
    const pidFile = join(this.paths(c.id).persist, `exec-${randomBytes(6).toString('hex')}.pid`);
    await mkdir(dirname(pidFile), { recursive: true });
    let child;
    try {
      child = spawnProcess(rt.path, ['--root', rt.root, 'exec', '--pid-file', pidFile, c.id, ...cmd], { stdio: ['ignore', 'out', 'out'] });
    } catch (err) {
      throw new BerthError('Internal', `cannot run ${rt.path} exec: ${messageOf(err)}`, { cause: err });
    }
    const collect = (stream: NodeJS.ReadableStream): Promise<Buffer> =>
      new Promise((resolve) => {
        const chunks: Buffer[] = [];
        let n = 0;
        stream.on('data', (d: Buffer) => {
          if (n < EXEC_OUTPUT_CAP) chunks.push(d.subarray(0, EXEC_OUTPUT_CAP - n));
          n += d.length;
        });
        stream.on('close', () => resolve(Buffer.concat(chunks)));
      });
    const out = collect(child.stdout!);
    const err = collect(child.stderr!);
    let timedOut: BerthError | undefined;
    const killExec = async (why: BerthError): Promise<void> => {
      timedOut ??= why;
      try {
        const pid = Number((await readFile(pidFile, 'utf8')).trim());
        // The command and everything it started (`sh -c 'sleep …'`): children would
        // otherwise be reparented to the container's init and live on.
        if (pid > 0) for (const p of [pid, ...descendants(pid)]) killQuietly(p);
      } catch {
        // not started yet, or already gone
      }
      // `runc exec` reaps the command it started: give it a moment, or the killed command
      // lingers as a zombie that `ps`/`pgrep` in the container still see.
      const grace = setTimeout(() => child.kill('SIGKILL'), 2000);
      void child.exited.then(() => clearTimeout(grace));
    };
    const timer =
      timeoutSeconds > 0
        ? setTimeout(
            () => void killExec(new BerthError('DeadlineExceeded', `command timed out after ${timeoutSeconds} s and was killed`)),
            timeoutSeconds * 1000,
          )
        : undefined;
    const onAbort = (): void => void killExec(new BerthError('DeadlineExceeded', 'the caller went away; the command was killed'));
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const st = await child.exited;
      const code = st.code ?? 128 + (st.signal ? osConstants.signals[st.signal] : 9);
      const [stdout, stderr] = await Promise.all([out, err]);
      if (timedOut) throw timedOut;
      return { stdout, stderr, exitCode: code };
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      await rm(pidFile, { force: true });
    }
  }

  /**
   * Starts an interactive command in a running container for the streaming Exec. The
   * caller owns the session: it must end in {@link ExecSession.exited}, or be killed.
   */
  async openExec(idOrPrefix: string, cmd: string[], opts: { tty: boolean; stdin: boolean }): Promise<ExecSession> {
    const c = this.find(idOrPrefix);
    if (!c || c.state === 'creating') throw new BerthError('NotFound', `container "${idOrPrefix}" not found`);
    if (c.state !== 'running') throw new BerthError('FailedPrecondition', `container ${c.id} is ${c.state}, not running`);
    const rt = this.runtimeOf(c);
    const persist = this.paths(c.id).persist;
    await mkdir(persist, { recursive: true });
    return startExecSession({
      runtimePath: rt.path,
      runtimeRoot: rt.root,
      containerId: c.id,
      cmd,
      tty: opts.tty,
      stdin: opts.stdin,
      pidFile: join(persist, `exec-${randomBytes(6).toString('hex')}.pid`),
    });
  }

  /** Attaches to a running container's main process (the streaming Attach); see {@link startAttachSession}. */
  openAttach(idOrPrefix: string, opts: { stdin: boolean }): ExecSession {
    const c = this.find(idOrPrefix);
    if (!c || c.state === 'creating') throw new BerthError('NotFound', `container "${idOrPrefix}" not found`);
    if (c.state !== 'running') throw new BerthError('FailedPrecondition', `container ${c.id} is ${c.state}, not running`);
    return startAttachSession({ socketDir: join(this.socketDir, c.id), ctlPath: join(this.paths(c.id).bundle, 'ctl'), stdin: opts.stdin });
  }

  /**
   * ReopenContainerLog: after kubelet renamed the log file, conmon opens a new one at the
   * same path. Lines written before the request are in the renamed file; none is lost.
   * Through conmon's control FIFO: message type 2 ("reopen logs").
   */
  async reopenLog(idOrPrefix: string): Promise<void> {
    const c = this.find(idOrPrefix);
    if (!c || c.state === 'creating') throw new BerthError('NotFound', `container "${idOrPrefix}" not found`);
    if (c.state !== 'running') throw new BerthError('FailedPrecondition', `container ${c.id} is ${c.state}, not running: there is no log to reopen`);
    let fh;
    try {
      fh = await open(join(this.paths(c.id).bundle, 'ctl'), fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
      await fh.write('2 0 0\n');
    } catch (err) {
      throw new BerthError('Unavailable', `container ${c.id}: its shim does not answer (${messageOf(err)})`);
    } finally {
      await fh?.close();
    }
    // conmon reopens asynchronously: answer once the new file exists (kubelet checks it).
    for (let i = 0; i < 100 && !existsSync(c.logPath); i++) await new Promise((r) => setTimeout(r, 10));
    if (!existsSync(c.logPath)) throw new BerthError('Unavailable', `container ${c.id}: the shim did not reopen ${c.logPath} within 1 s`);
  }

  /**
   * UpdateContainerResources: applies CPU and memory changes to a running (or created)
   * container with the runtime's `update`, then records them in the container's config.
   */
  async updateResources(
    idOrPrefix: string,
    r: NonNullable<NonNullable<CriContainerConfig['linux']>['resources']>,
    raw: Record<string, unknown>,
  ): Promise<void> {
    const c = this.find(idOrPrefix);
    if (!c || c.state === 'creating') throw new BerthError('NotFound', `container "${idOrPrefix}" not found`);
    if (c.state !== 'running' && c.state !== 'created')
      throw new BerthError('FailedPrecondition', `container ${c.id} is ${c.state}; only a created or running container can be updated`);
    const rt = this.runtimeOf(c);
    const res: Record<string, unknown> = {};
    const cpu: Record<string, unknown> = {};
    if (r.cpu_shares > 0) cpu.shares = r.cpu_shares;
    if (r.cpu_quota !== 0) cpu.quota = r.cpu_quota;
    if (r.cpu_period > 0) cpu.period = r.cpu_period;
    if (r.cpuset_cpus !== '') cpu.cpus = r.cpuset_cpus;
    if (r.cpuset_mems !== '') cpu.mems = r.cpuset_mems;
    if (Object.keys(cpu).length > 0) res.cpu = cpu;
    if (r.memory_limit_in_bytes > 0) {
      res.memory = { limit: r.memory_limit_in_bytes, swap: r.memory_swap_limit_in_bytes > 0 ? r.memory_swap_limit_in_bytes : r.memory_limit_in_bytes };
    }
    const run = await execProcess(rt.path, ['--root', rt.root, 'update', '--resources', '-', c.id], { input: JSON.stringify(res), maxBuffer: 4096 });
    if (run.code !== 0) {
      throw new BerthError(
        'FailedPrecondition',
        `container ${c.id}: the runtime refused the update: ${run.stderr.trim().replace(/^time="[^"]*" level=\w+ msg="(.*)"$/s, '$1') || `exit ${run.code ?? run.signal}`}`,
      );
    }
    this.o.repo.updateConfig(c.id, { ...c.config, linux: { ...((c.config.linux as object | undefined) ?? {}), resources: raw } });
  }

  /** Stops every container of a pod (StopPodSandbox), lost (`unknown`) ones too, as containerd does. */
  async stopAll(sandboxId: string): Promise<void> {
    for (const c of this.o.repo.ofSandbox(sandboxId)) if (c.state === 'running' || c.state === 'created' || c.state === 'unknown') await this.stop(c.id, 0);
  }

  /** Removes every container of a pod (RemovePodSandbox). */
  async removeAll(sandboxId: string): Promise<void> {
    for (const c of this.o.repo.ofSandbox(sandboxId)) await this.remove(c.id);
  }

  /**
   * Recovery: `creating` rows are rolled back; running containers are checked against
   * their exit files (an exit while berthd was down is recorded with its code) and
   * watched again; a container whose shim and runtime state are both gone without an
   * exit file becomes `unknown`.
   */
  async recover(): Promise<void> {
    for (const c of this.o.repo.list()) {
      try {
        if (c.state === 'creating' || c.state === 'removing') {
          await this.remove(c.id);
          continue;
        }
        if (c.state !== 'running' && c.state !== 'created') continue;
        const code = await this.o.shim.exitCode(this.exitDir, c.id);
        if (code !== undefined) {
          await this.recordExit(c.id, code);
          continue;
        }
        const rt = this.runtimeOf(c);
        const st = await this.o.shim.state(c.id, rt.path, rt.root);
        if ((!st || st.status === 'stopped') && !shimAlive(c.shimPid, c.id)) {
          // The shim may have written the exit file since it was read.
          const late = await this.o.shim.exitCode(this.exitDir, c.id);
          if (late !== undefined) await this.recordExit(c.id, late);
          else
            this.o.repo.update(c.id, () => ({
              state: 'unknown',
              reason: 'Unknown',
              message: 'the container stopped while berthd was down and no exit code was recorded (its shim died)',
            }));
        } else if (c.state === 'running' || !st || st.status === 'stopped') {
          // Running, or just stopped with its shim about to write the exit file.
          this.watch(c.id);
        }
      } catch (err) {
        this.o.log.error('recovery of a container failed', { container: c.id, error: messageOf(err) });
        // Followed all the same: the exit file, or the runtime once the shim is gone.
        if (c.state === 'running') this.watch(c.id);
      }
    }
  }

  close(): void {
    this.lifetime.abort(new BerthError('Unavailable', 'berthd is shutting down'));
    clearInterval(this.shimCheck);
  }
}

/** Whether a process exists and is not a zombie (a killed shim may linger unreaped). */
function alive(pid: number | null): boolean {
  if (pid === null || pid <= 0) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/**
 * Whether the shim `pid` of container `id` still runs: alive, not a zombie, and its
 * command line names the container (a pid may have been reused since it was recorded).
 */
function shimAlive(pid: number | null, id: string): boolean {
  if (!alive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(id);
  } catch {
    return false;
  }
}

/** Bytes of a Localhost seccomp profile berth reads. */
const MAX_SECCOMP_PROFILE = 1 << 20;

/**
 * Reads the Localhost seccomp profile a container names (kubelet passes its absolute
 * path on the node) so that the pure spec generator can embed it.
 */
async function localhostSeccompProfiles(cfg: CriContainerConfig): Promise<Record<string, unknown>> {
  const sec = cfg.linux?.security_context?.seccomp;
  if (sec?.profile_type !== 'Localhost' || !sec.localhost_ref) return {};
  const ref = sec.localhost_ref;
  const path = ref.startsWith('localhost/') ? ref.slice('localhost/'.length) : ref;
  if (!path.startsWith('/')) throw new BerthError('InvalidArgument', `seccomp localhost_ref "${ref}" must be an absolute path on the node`);
  let text: string;
  try {
    const fh = await open(path, 'r');
    try {
      const buf = Buffer.alloc(MAX_SECCOMP_PROFILE + 1);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      if (bytesRead > MAX_SECCOMP_PROFILE) throw new BerthError('InvalidArgument', `seccomp profile ${path} is larger than ${MAX_SECCOMP_PROFILE} bytes`);
      text = buf.subarray(0, bytesRead).toString('utf8');
    } finally {
      await fh.close();
    }
  } catch (err) {
    if (err instanceof BerthError) throw err;
    throw new BerthError('NotFound', `seccomp profile ${path} (localhost_ref) cannot be read: ${messageOf(err)}`);
  }
  try {
    return { [ref]: JSON.parse(text) as unknown };
  } catch (err) {
    throw new BerthError('InvalidArgument', `seccomp profile ${path} is not valid JSON: ${messageOf(err)}`);
  }
}

async function unmount(path: string): Promise<void> {
  try {
    await umount(path);
  } catch (err) {
    // EINVAL: not a mount point (any more); ENOENT: gone.
    if (errnoOf(err) === 'EINVAL' || errnoOf(err) === 'ENOENT') return;
    throw new BerthError('Internal', `unmounting ${path}: ${messageOf(err)}`, { cause: err });
  }
}

/**
 * Reads a small file of the image (passwd, group): '' when absent, bounded in size, and
 * never through a symlink that leads out of the rootfs (an image must not make berthd
 * read a host file).
 */
async function readBounded(rootfs: string, rel: string): Promise<string> {
  let fh;
  try {
    const real = await realpath(join(rootfs, rel));
    if (!real.startsWith(rootfs + '/')) return '';
    fh = await open(real, 'r');
  } catch {
    return '';
  }
  try {
    const buf = Buffer.alloc(MAX_ID_FILE);
    const { bytesRead } = await fh.read(buf, 0, MAX_ID_FILE, 0);
    return buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await fh.close();
  }
}
