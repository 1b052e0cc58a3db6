/**
 * The end of a container's life: StopContainer's signals and waits, what RemoveContainer
 * deletes (its runtime record, rootfs mount, prepared mounts, writable layer, the shim's
 * files, its bundle and its row) and the retiring of an exited container
 * (ExitMonitor.retire), which frees the runtime record and the rootfs mount at its exit.
 * The lifecycle (container-service.ts) finds the container, holds its lock and hands on.
 */
import { removeTree } from '../common/remove-tree.js';
import { settleAll } from '../common/settle-all.js';
import type { Logger } from '../common/logger.js';
import type { ImageService } from '../images/image-service.js';
import type { OciRuntime } from '../oci/oci-runtime.js';
import type { Shim } from '../shim/shim.js';
import type { ContainerEvents } from './container-events.js';
import { stopSignalOf } from './container-facts.js';
import type { ContainerRecord, ContainerRepository } from './container-repository.js';
import type { ExitMonitor } from './exit-monitor.js';
import { releasePreparedMounts } from './idmap.js';
import type { RootfsMounter } from './rootfs.js';

/** How long a stop waits for the exit of a container it sent SIGKILL. */
const KILL_WAIT_MS = 10_000;

export interface ContainerTeardownOptions {
  repo: ContainerRepository;
  images: Pick<ImageService, 'stopSignalOf' | 'removeContainerLayer'>;
  shim: Shim;
  rootfs: RootfsMounter;
  exits: ExitMonitor;
  log: Logger;
  /** Where deletions are published. */
  events: ContainerEvents;
  runtimeOf(c: { sandboxId: string }): OciRuntime;
  /** The container's bundle and the rootfs mount point in it. */
  paths(id: string): { bundle: string; rootfs: string };
  /** Where idmap.ts prepared the container's mounts. */
  preparedDir(id: string): string;
}

export class ContainerTeardown {
  constructor(private readonly o: ContainerTeardownOptions) {}

  /** Stop signal, up to `timeoutSeconds`, then SIGKILL, for container `id`; the caller holds its lock. */
  async stop(id: string, timeoutSeconds: number, signal?: AbortSignal): Promise<void> {
    const c = this.o.repo.get(id)!;
    if (c.state === 'exited' || c.state === 'removing') return;
    const rt = this.o.runtimeOf(c);
    if (c.state === 'unknown') return this.o.exits.stopLost(c, rt);
    // As decided at creation: ContainerConfig.stop_signal, else the image's (an unusable one: SIGTERM).
    const stopSig = stopSignalOf(c.facts, () => this.o.images.stopSignalOf(c.imageId));
    if (stopSig.warning) this.o.log.warn('stop signal', { container: c.id, warning: stopSig.warning });
    const sig = stopSig.signal;
    // Without its shim (killed) no exit file will come: ask the runtime instead.
    const shimUp = this.o.exits.shimAlive(c);
    const exited = (ms: number): Promise<number | undefined> => (shimUp ? this.o.exits.exitWithin(c.id, ms, signal) : this.o.exits.stoppedWithin(c.id, rt, ms));
    if (c.state === 'running' && timeoutSeconds > 0) {
      await rt.kill(c.id, sig).catch(() => undefined);
      const code = await exited(timeoutSeconds * 1000);
      if (code !== undefined) return this.o.exits.recordExit(c.id, code);
    }
    await rt.kill(c.id, 'KILL', true).catch(() => undefined);
    const code = await exited(KILL_WAIT_MS);
    if (code !== undefined) return this.o.exits.recordExit(c.id, code);
    await this.o.exits.refuseIfStillLive(c, rt, KILL_WAIT_MS);
    // Never started (no shim exit for a created container that got killed before start
    // on some runtimes), or the shim is gone: record it as killed.
    return this.o.exits.recordExit(c.id, 137);
  }

  /** Frees what an exited container no longer needs before its removal: its runtime record and its rootfs mount. */
  async retire(c: ContainerRecord): Promise<void> {
    await this.o.runtimeOf(c).delete(c.id, true);
    await this.o.rootfs.unmount(this.o.paths(c.id).rootfs);
  }

  /** Removes container `id` and everything of it; the caller holds its lock and has stopped it. */
  async remove(id: string): Promise<void> {
    const c = this.o.repo.get(id);
    if (!c) return;
    // A row still `creating` (recovery) was never announced, so its removal is not either.
    const announced = c.state !== 'creating';
    this.o.repo.update(c.id, () => ({ state: 'removing' }));
    const rt = this.o.runtimeOf(c);
    const { bundle, rootfs } = this.o.paths(c.id);
    // Retired at its exit (ExitMonitor.retire): no runtime record and no rootfs mount left.
    const retired = c.state === 'exited' && this.o.exits.retired(c.id);
    const layer = async (): Promise<void> => {
      if (!retired) await this.o.rootfs.unmount(rootfs);
      // Idmapped and image-volume mounts; the image volumes' use rows go with the container's row.
      await releasePreparedMounts(this.o.preparedDir(c.id));
      await this.o.images.removeContainerLayer(c.id);
    };
    if (c.state === 'exited') {
      // Its processes are gone (or, in a shared PID namespace, left to the runtime's
      // delete to kill): the runtime's delete, a process spawn and the longest step, runs
      // beside the unmounts, the writable layer's removal and the shim's files. A retired
      // container's bundle holds no mount and no runtime uses it: it goes right after the
      // shim's files in it, beside the writable layer.
      const files = async (): Promise<void> => {
        await this.o.shim.removeFiles({ id: c.id, bundle });
        if (retired) await removeTree(bundle);
      };
      await settleAll([retired ? undefined : rt.delete(c.id, true), layer(), files()]);
    } else {
      // Maybe still live (lost shim, an interrupted create): killed and deleted first.
      await rt.delete(c.id, true);
      await layer();
      await this.o.shim.removeFiles({ id: c.id, bundle });
    }
    // After the rootfs unmount (never into a mount: removeTree stops at one).
    if (!retired) await removeTree(bundle);
    this.o.repo.delete(c.id);
    this.o.exits.forget(c.id);
    if (announced) this.o.events.publish('deleted', c);
  }
}
