/**
 * One layer of a pull: make its committed snapshot (and its blob) exist.
 *
 * The task is shared by chain ID (SharedWork), so concurrent pulls of images with common
 * layers do each layer once. The blob is downloaded into the content store (which checks
 * its digest) and unpacked on a worker as it arrives (the diff ID checked at its end);
 * when the blob is already stored, or another download of it is under way, the layer
 * unpacks from the stored blob. The snapshot is committed once the blob is verified and
 * stored, and its parent committed. The pull's limits (pull-limits.ts) grant the unpack's
 * bytes as it goes and are settled however it ends.
 */
import type { Readable } from 'node:stream';
import type { ImagesConfig } from '../config/schema.js';
import { traced } from '../common/trace-points.js';
import { BerthError } from '../common/errors.js';
import type { BlobSink, BlobSinkFactory, ContentStore } from './content/content-store.js';
import type { Descriptor, LayerCompression } from './manifest.js';
import type { PullLimits } from './pull-limits.js';
import type { BlobRequest } from './registry/client.js';
import type { Joined, SharedWork } from './shared-work.js';
import type { PreparedSnapshot, Snapshotter } from './snapshots/snapshotter.js';

/**
 * Runs at most `n` tasks at once, the heaviest waiting one first. Tasks asked for in the
 * same tick compete by weight (the start is a microtask later): a pull asks for all its
 * layers at once, and the largest downloads start first, so the pull does not end on a
 * large layer that started last and runs alone on one core.
 */
export class Limiter {
  private active = 0;
  private queue: Array<{ start: () => void; weight: number; seq: number }> = [];
  private seq = 0;
  private scheduled = false;
  constructor(private readonly n: number) {}

  /**
   * Runs `task` when there is room. The task may call `release` to give its place back
   * before it ends (a download whose bytes have all come in, while its file syncs).
   */
  async run<T>(task: (release: () => void) => Promise<T>, weight = 0): Promise<T> {
    await new Promise<void>((start) => {
      this.queue.push({ start, weight, seq: this.seq++ });
      if (!this.scheduled) {
        this.scheduled = true;
        queueMicrotask(() => {
          this.scheduled = false;
          this.pump();
        });
      }
    });
    let held = true;
    const release = (): void => {
      if (!held) return;
      held = false;
      this.active--;
      this.pump();
    };
    try {
      return await task(release);
    } finally {
      release();
    }
  }

  /** Starts the heaviest waiting tasks (the earliest among equals) while there is room. */
  private pump(): void {
    while (this.active < this.n && this.queue.length > 0) {
      let best = 0;
      for (let i = 1; i < this.queue.length; i++) {
        const q = this.queue[i]!;
        const b = this.queue[best]!;
        if (q.weight > b.weight || (q.weight === b.weight && q.seq < b.seq)) best = i;
      }
      const [next] = this.queue.splice(best, 1);
      this.active++;
      next!.start();
    }
  }
}

/** What a layer task uses of the image service. */
export interface LayerTaskDeps {
  images: ImagesConfig;
  content: ContentStore;
  snapshots: Snapshotter;
  work: SharedWork;
}

/** One layer of one pull. */
export interface LayerTaskSpec {
  chainId: string;
  parent: { chainId: string; task: Promise<void> } | undefined;
  diffId: string;
  layer: Descriptor & { compression: LayerCompression };
  /** The pull's image, for the trace points. */
  image: string;
  open: (signal: AbortSignal) => Promise<Readable>;
  /**
   * The blob's first GET, for the unpack worker to send itself (RegistryClient.blobRequest);
   * undefined (or no function) has `open` fetch it.
   */
  request?: () => BlobRequest | undefined;
  /** The worker's GET was answered with a redirect (RegistryClient.blobRedirected). */
  redirected?: () => void;
  limiter: Limiter;
  limits: PullLimits;
}

/**
 * Makes one layer's committed snapshot (and its blob) exist; joins the task for its chain
 * ID when one runs.
 */
export function layerTask(d: LayerTaskDeps, t: LayerTaskSpec, caller: AbortSignal | undefined): Joined<void> {
  const content = d.content;
  const run = async (signal: AbortSignal): Promise<void> => {
    if (d.snapshots.committed(t.chainId)) {
      await t.limiter.run((release) => fetchLayer(content, t, signal, release), t.layer.size);
      return;
    }
    // The layer's own byte limit, and the shared limits granted as its unpack goes; settled
    // however the unpack ends.
    const allowance = t.limits.forLayer(t.layer.digest, t.layer.size);
    const unpack = {
      diffId: t.diffId,
      layer: t.layer.digest,
      compression: t.layer.compression,
      maxBytes: allowance.maxBytes,
      ...(allowance.limitText ? { limitText: allowance.limitText } : {}),
      maxLayerBytes: d.images.max_layer_bytes,
      grant: allowance.grant,
      signal,
    };
    let prepared: PreparedSnapshot;
    try {
      // The layer unpacks while it downloads (on a worker that also hashes and writes the
      // blob); when the blob is already stored, or another download of it is under way,
      // it unpacks from the stored blob.
      let streamed: Promise<PreparedSnapshot> | undefined;
      await t.limiter.run(async (release) => {
        if (content.has(t.layer.digest)) return;
        // The unpack's trace point begins before its snapshot exists, as for an unpack from a stored blob.
        const sink = (tmp: string, alg: 'sha256' | 'sha512'): Promise<BlobSink> =>
          new Promise<BlobSink>((resolveSink, rejectSink) => {
            streamed = traced('berth:image.unpack', { image: t.image, digest: t.layer.digest }, async () => {
              const x = await d.snapshots.extractStream({ ...unpack, blobTmp: tmp, alg }).catch((err: unknown) => {
                rejectSink(err);
                throw err;
              });
              const request = t.request;
              resolveSink(
                request
                  ? {
                      ...x.sink,
                      // The worker downloads the blob itself; undefined (a fallback) has the store feed it.
                      fetch: async (onBytes?: (n: number) => void) => {
                        const req = request();
                        if (!req) return undefined;
                        const o = await x.sink.fetch(req, t.layer.size, `${t.image} layer ${t.layer.digest}`, onBytes);
                        if (o.ok) return o.bytes;
                        if (o.fallback) {
                          if (o.status !== undefined && o.status >= 300 && o.status < 400) t.redirected?.();
                          return undefined;
                        }
                        throw o.kind ? new BerthError(o.kind, o.message) : new Error(o.message);
                      },
                    }
                  : { writable: x.sink.writable, seal: () => x.sink.seal(), closed: x.sink.closed },
              );
              return x.prepared;
            });
            streamed.catch(() => undefined);
          });
        await fetchLayer(content, t, signal, release, sink).catch(async (err: unknown) => {
          // The unpack stops with the download; its snapshot is thrown away once it settles.
          await streamed?.then(
            (p) => d.snapshots.discard(p),
            () => undefined,
          );
          throw err;
        });
      }, t.layer.size);
      prepared =
        streamed !== undefined
          ? await streamed
          : await traced('berth:image.unpack', { image: t.image, digest: t.layer.digest }, () =>
              d.snapshots.extract({ ...unpack, blobPath: content.path(t.layer.digest) }),
            );
    } catch (err) {
      allowance.settle(); // the failed unpack's snapshot is gone: nothing to count
      throw err;
    }
    try {
      allowance.settle(prepared.tarBytes);
      if (t.parent) await t.parent.task;
      d.snapshots.commit(prepared, t.chainId, t.parent?.chainId);
    } catch (err) {
      await d.snapshots.discard(prepared);
      throw err;
    }
  };
  return d.work.join(`layer:${t.chainId}`, caller, run);
}

/**
 * Downloads a layer's blob into the content store unless it is there (see ContentStore.ensure).
 * `received` is called once all the blob's bytes have come in: the download's place is
 * given back then, while the blob's file is synced and its unpack ends, so the next
 * layer's download overlaps them.
 */
function fetchLayer(
  content: ContentStore,
  t: { layer: Descriptor; image: string; open: (signal: AbortSignal) => Promise<Readable> },
  signal: AbortSignal,
  received: () => void,
  sink?: BlobSinkFactory,
): Promise<void> {
  if (content.has(t.layer.digest)) return Promise.resolve();
  const step = { image: t.image, digest: t.layer.digest, bytes: 0 };
  return traced('berth:image.fetch', step, () =>
    content.ensure(
      t.layer,
      () => t.open(signal),
      signal,
      (n) => {
        step.bytes += n;
        if (step.bytes >= t.layer.size) received();
      },
      sink,
    ),
  );
}
