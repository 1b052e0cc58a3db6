/**
 * The image service: pull, look up, list, remove, and account for images.
 *
 * A pull, step by step:
 * 1. resolve the reference at the first endpoint that has it (mirrors, then the registry);
 * 2. walk down indexes to this node's platform (bounded depth), checking every digest;
 * 3. fetch the config; its diff IDs give each layer's chain ID;
 * 4. download the layers in parallel (images.max_concurrent_downloads), each unpacked on
 *    a worker thread as it arrives (the worker also hashes the blob and writes it to the
 *    content store), and commit their snapshots bottom-up once each layer's blob digest
 *    and diff ID have been checked;
 * 5. store manifests and config, then record the image and its names in one
 *    transaction: until that commit nothing of the pull is listed.
 *
 * A pull that fails removes what it added and nothing else uses (a cancelled one keeps
 * verified blobs and snapshots for its retry, as does a crash). Work in flight is
 * protected from a concurrent RemoveImage by leases.
 *
 * ImageService is the facade the rest of berth calls. Beside the pull path it delegates
 * to image-lookup.ts (finding images by ID or name), image-stores.ts (garbage
 * collection, recovery, ImageFsInfo), container-layers.ts (the containers' writable
 * layers) and volume-use.ts (images mounted as volumes); leases.ts protects a pull's work;
 * layer-task.ts is one layer's download, unpack and commit.
 */
import { abortable } from '../common/abort.js';
import { BerthError, isKind, messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { traced } from '../common/trace-points.js';
import { parseImageUser } from '../common/user-ids.js';
import type { ImagesConfig, RegistryConfig } from '../config/schema.js';
import { ContainerLayers } from './container-layers.js';
import type { ContentStore } from './content/content-store.js';
import { ImageLookup } from './image-lookup.js';
import type { ImageRecord, ImageRepository } from './image-repository.js';
import { ImageStores } from './image-stores.js';
import { Leases } from './leases.js';
import { PullLimits } from './pull-limits.js';
import { Limiter, layerTask } from './layer-task.js';
import { SharedWork } from './shared-work.js';
import {
  ACCEPTED_MANIFEST_TYPES,
  chainIds,
  hostPlatform,
  isDigest,
  manifestKind,
  parseImageConfig,
  parseIndex,
  parseManifest,
  sha256Digest,
  selectPlatform,
  verifyDigest,
  type Descriptor,
  type ImageConfig,
  type Platform,
} from './manifest.js';
import { digestedName, formatReference, parseReference, taggedName, type ImageReference } from './reference.js';
import type { Credentials } from './registry/auth.js';
import { RegistryClient, type Endpoint } from './registry/client.js';
import type { Snapshotter } from './snapshots/snapshotter.js';
import { refuseRemovalWhileMounted, useImageAsVolume } from './volume-use.js';

export interface ImageServiceOptions {
  /** Read at each use: a view of the config in force (config/live.ts) follows reloads. */
  images: ImagesConfig;
  /** The per-registry settings in force, asked at each pull. */
  registries: () => Record<string, RegistryConfig>;
  content: ContentStore;
  snapshots: Snapshotter;
  repo: ImageRepository;
  log: Logger;
  platform?: Platform;
  backoffMs?: number;
}

interface Resolved {
  ep: Endpoint;
  data: Buffer;
  contentType: string;
  digest: string;
}

export class ImageService {
  private readonly client: RegistryClient;
  private readonly platform: Platform;
  private readonly leases = new Leases();
  /** Shutdown stops all work. */
  private readonly lifetime = new AbortController();
  /** Downloads and unpacks shared by pulls: each runs while some pull waits for it. */
  private readonly work = new SharedWork(this.lifetime.signal);
  private pulling = 0;

  private readonly lookup: ImageLookup;
  private readonly stores: ImageStores;
  private readonly containerLayers: ContainerLayers;

  constructor(private readonly o: ImageServiceOptions) {
    this.lookup = new ImageLookup(o.repo, () => o.images.pinned);
    this.stores = new ImageStores(o.content, o.snapshots);
    this.containerLayers = new ContainerLayers(o.snapshots);
    this.client = new RegistryClient({
      images: o.images,
      registries: o.registries,
      log: o.log,
      ...(o.backoffMs !== undefined ? { backoffMs: o.backoffMs } : {}),
    });
    this.platform = o.platform ?? hostPlatform();
  }

  /** Finds an image by ID (full, "sha256:"-less, or a unique prefix), tag or digest reference. */
  find(spec: string): ImageRecord | undefined {
    return this.lookup.find(spec);
  }

  list(): ImageRecord[] {
    return this.lookup.list();
  }

  /** The STOPSIGNAL of the image `id` (a full image ID), '' for none; undefined when it is gone. */
  stopSignalOf(id: string): string | undefined {
    return this.o.repo.stopSignal(id);
  }

  /** The tags and digest names of the image `id` (a full image ID); none when it is gone. */
  namesOf(id: string): Pick<ImageRecord, 'tags' | 'digests'> {
    return this.o.repo.names(id);
  }

  /**
   * Removes an image and all its names; collects what nothing else uses. Idempotent. An
   * image a container mounts as a volume is refused while that container exists.
   */
  async remove(spec: string): Promise<ImageRecord | undefined> {
    const img = this.find(spec);
    if (!img) return undefined;
    refuseRemovalWhileMounted(this.o.repo, img);
    this.o.repo.delete(img.id);
    this.o.log.info('image removed', { id: img.id, tags: img.tags });
    await this.collect();
    return img;
  }

  /** Deletes blobs and snapshots that no image, container or pull in flight uses (see ImageStores.collect). */
  collect(): Promise<{ blobs: number; snapshots: number }> {
    return this.stores.collect((key) => this.leases.has(key));
  }

  /** A container's writable layer on an image (see OverlaySnapshotter.prepareActive). */
  prepareContainerLayer(containerId: string, image: ImageRecord): Promise<{ options: string }> {
    return this.containerLayers.prepare(containerId, image);
  }

  /**
   * Image volumes (Mount.image): records that container `containerId` mounts the image
   * `spec` names as its CRI mount `index`, and returns the image's layer directories, top
   * first, for a read-only overlay. Synchronous, so no RemoveImage or GC can come between
   * the lookup and the record; the container's row must exist. NotFound when the image
   * is absent, as kubelet expects (it pulls and retries).
   */
  useAsVolume(containerId: string, index: number, spec: string): { image: ImageRecord; lowerDirs: string[] } {
    return useImageAsVolume(this.o.repo, this.o.snapshots, this.find(spec), containerId, index, spec);
  }

  /** The directory holding what a container wrote (its writable layer), if it has one. */
  containerLayerDir(containerId: string): string | undefined {
    return this.containerLayers.dir(containerId);
  }

  removeContainerLayer(containerId: string): Promise<void> {
    return this.containerLayers.remove(containerId);
  }

  /** Stops shared downloads and unpacks (shutdown) and waits until they have cleaned up. */
  async close(): Promise<void> {
    this.lifetime.abort(new BerthError('Unavailable', 'berthd is shutting down'));
    await this.work.idle();
    await this.o.content.idle();
    await this.o.snapshots.close();
  }

  /** Disk use of the containers' writable layers, cached (see ContainerLayers.usage). */
  containerLayersUsage(): Promise<{ bytes: bigint; inodes: bigint; mountpoint: string }> {
    return this.containerLayers.usage();
  }

  usage(): { bytes: number; inodes: number; mountpoint: string } {
    return this.stores.usage();
  }

  /** Each store recovers on its own: one failing does not keep the other from running. */
  recover(): Promise<void> {
    return this.stores.recover();
  }

  /** Pulls an image; returns its record once it is fully stored and listed. */
  async pull(refText: string, credentials: Credentials | undefined, signal?: AbortSignal): Promise<ImageRecord> {
    const ref = parseReference(refText);
    const what = formatReference(ref);
    this.pulling++;
    try {
      return await traced('berth:image.pull', { image: what }, () => this.pullRef(ref, what, credentials, signal));
    } finally {
      this.pulling--;
    }
  }

  /** PullImage calls under way (callers of one shared transfer counted each). */
  get pullsInProgress(): number {
    return this.pulling;
  }

  private async pullRef(ref: ImageReference, what: string, credentials: Credentials | undefined, signal?: AbortSignal): Promise<ImageRecord> {
    const t0 = Date.now();
    const top = await this.resolve(ref, credentials, signal, what);
    const { ep } = top;
    const blobs: Array<{ desc: Descriptor; data: Buffer }> = [
      { desc: { digest: top.digest, size: top.data.length, mediaType: top.contentType || ACCEPTED_MANIFEST_TYPES[0]! }, data: top.data },
    ];

    // Indexes down to this platform's manifest.
    let cur = { data: top.data, contentType: top.contentType, digest: top.digest };
    for (let depth = 0; manifestKind(cur.contentType, cur.data, `${what} (${cur.digest})`) === 'index'; depth++) {
      if (depth >= this.o.images.max_index_depth) {
        throw new BerthError('FailedPrecondition', `${what}: indexes nest deeper than ${this.o.images.max_index_depth} levels (images.max_index_depth)`);
      }
      const index = parseIndex(cur.data, `${what} index ${cur.digest}`);
      const desc = selectPlatform(index, this.platform, what);
      if (desc.size > this.o.images.max_manifest_bytes) {
        throw new BerthError(
          'ResourceExhausted',
          `${what}: manifest ${desc.digest} is ${desc.size} bytes, over images.max_manifest_bytes (${this.o.images.max_manifest_bytes})`,
        );
      }
      const m = await this.client.fetchManifest(
        ep,
        ref.path,
        desc.digest,
        [desc.mediaType, ...ACCEPTED_MANIFEST_TYPES],
        this.o.images.max_manifest_bytes,
        signal,
        `${what} manifest ${desc.digest}`,
      );
      verifyDigest(m.data, desc.digest, `${what} manifest`);
      cur = { data: m.data, contentType: desc.mediaType, digest: desc.digest };
      blobs.push({ desc: { digest: desc.digest, size: m.data.length, mediaType: desc.mediaType }, data: m.data });
    }
    const manifest = parseManifest(cur.data, `${what} manifest ${cur.digest}`);
    if (manifest.layers.length > this.o.images.max_layers) {
      throw new BerthError(
        'ResourceExhausted',
        `${what}: manifest ${cur.digest} lists ${manifest.layers.length} layers, over images.max_layers (${this.o.images.max_layers})`,
      );
    }

    // The config, read whole (small, capped).
    if (manifest.config.size > this.o.images.max_config_bytes) {
      throw new BerthError(
        'ResourceExhausted',
        `${what}: config ${manifest.config.digest} is ${manifest.config.size} bytes, over images.max_config_bytes (${this.o.images.max_config_bytes})`,
      );
    }
    for (const l of manifest.layers) {
      if (l.size > this.o.images.max_layer_bytes) {
        throw new BerthError(
          'ResourceExhausted',
          `${what}: layer ${l.digest} declares ${l.size} bytes, over images.max_layer_bytes (${this.o.images.max_layer_bytes})`,
        );
      }
    }
    // Held from before first use until the image row is committed (or the pull fails).
    const leases = [this.leases.hold([...blobs.map((b) => b.desc.digest), manifest.config.digest, ...manifest.layers.map((l) => l.digest)])];
    // Downloads and unpacks may be shared with other pulls: each runs while some pull
    // waits for it (SharedWork), and stops when the last one goes away.
    let failure: unknown;
    // The manifests, verified and in memory, are stored while the layers download: their
    // files' syncs are then off the pull's path.
    const storingManifests = (async () => {
      for (const b of blobs) await this.o.content.putVerified(b.desc, b.data);
    })();
    storingManifests.catch(() => undefined);
    try {
      await this.work.join(`blob:${manifest.config.digest}`, signal, (shared) =>
        this.o.content.ensure(
          manifest.config,
          () => this.client.openBlob(ep, ref.path, manifest.config.digest, manifest.config.size, shared, `${what} config ${manifest.config.digest}`),
          shared,
        ),
      ).caller;
      const config = parseImageConfig(await this.o.content.readBuffer(manifest.config.digest), `${what} config ${manifest.config.digest}`);
      if (config.diffIds.length !== manifest.layers.length) {
        throw new BerthError(
          'FailedPrecondition',
          `${what}: the manifest has ${manifest.layers.length} layers but the config lists ${config.diffIds.length} diff IDs`,
        );
      }
      const chain = chainIds(config.diffIds);
      leases.push(this.leases.hold(chain));

      // One task per layer: download and unpack in parallel, commit bottom-up.
      const limiter = new Limiter(this.o.images.max_concurrent_downloads);
      const limits = new PullLimits(this.o.images, this.o.content.root, what);
      const toDownload = manifest.layers.filter((l) => !this.o.content.has(l.digest));
      await limits.checkDownloads(
        toDownload.reduce((n, l) => n + l.size, 0),
        toDownload.length,
      );
      const tasks: Array<Promise<void>> = [];
      let parent: { chainId: string; task: Promise<void> } | undefined;
      for (const [i, layer] of manifest.layers.entries()) {
        const joined = layerTask(
          { images: this.o.images, content: this.o.content, snapshots: this.o.snapshots, work: this.work },
          {
            chainId: chain[i]!,
            parent,
            diffId: config.diffIds[i]!,
            layer,
            image: what,
            open: (shared) => this.client.openBlob(ep, ref.path, layer.digest, layer.size, shared, `${what} layer ${layer.digest}`),
            request: () => this.client.blobRequest(ep, ref.path, layer.digest),
            redirected: () => this.client.blobRedirected(ep),
            limiter,
            limits,
          },
          signal,
        );
        tasks.push(joined.caller);
        parent = { chainId: chain[i]!, task: joined.shared };
      }
      // Wait for all, so no task rejects unobserved; report the first failure.
      const outcomes = await abortable(Promise.allSettled(tasks), signal);
      const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
      if (failed) throw failed.reason;

      await storingManifests;
      const size = blobs.reduce((n, b) => n + b.data.length, 0) + manifest.config.size + manifest.layers.reduce((n, l) => n + l.size, 0);
      const tag = ref.digest ? undefined : taggedName(ref);
      this.o.repo.save({
        id: manifest.config.digest,
        manifestDigest: cur.digest,
        config,
        size,
        layers: manifest.layers.map((l, i) => ({ blobDigest: l.digest, diffId: config.diffIds[i]!, chainId: chain[i]! })),
        blobs: [...blobs.map((b) => b.desc.digest), manifest.config.digest, ...manifest.layers.map((l) => l.digest)],
        tag,
        digestName: digestedName(ref, top.digest),
      });
      this.o.log.info('image pulled', {
        image: what,
        id: manifest.config.digest,
        layers: manifest.layers.length,
        bytes: size,
        ms: Date.now() - t0,
        endpoint: ep.base.origin,
      });
      return this.o.repo.get(manifest.config.digest)!;
    } catch (err) {
      failure = err;
      throw err;
    } finally {
      // Not left running past the leases that keep its blobs from a collection.
      await storingManifests.catch(() => undefined);
      for (const release of leases) release();
      // A failed pull removes what it added and nothing uses; a cancelled one keeps
      // verified blobs and snapshots for its retry.
      if (failure !== undefined && !signal?.aborted && !isKind(failure, 'Cancelled') && !isKind(failure, 'DeadlineExceeded')) {
        await this.collect().catch((e: unknown) => this.o.log.warn('cleanup after a failed pull failed', { image: what, error: messageOf(e) }));
      }
    }
  }

  /** Fetches the manifest (or index) the reference names, trying mirrors first. */
  private async resolve(ref: ImageReference, credentials: Credentials | undefined, signal: AbortSignal | undefined, what: string): Promise<Resolved> {
    const endpoints = this.client.endpoints(ref, credentials);
    const reference = ref.digest ?? ref.tag ?? 'latest';
    for (const ep of endpoints) {
      try {
        const m = await this.client.fetchManifest(ep, ref.path, reference, ACCEPTED_MANIFEST_TYPES, this.o.images.max_manifest_bytes, signal, what);
        let digest: string;
        if (ref.digest) {
          verifyDigest(m.data, ref.digest, what);
          digest = ref.digest;
        } else {
          digest = sha256Digest(m.data);
          if (m.digestHeader && isDigest(m.digestHeader) && m.digestHeader.startsWith('sha256:') && m.digestHeader !== digest) {
            throw new BerthError('DataLoss', `${what}: registry ${ep.host} says the manifest is ${m.digestHeader}, but its content hashes to ${digest}`);
          }
        }
        return { ep, data: m.data, contentType: m.contentType, digest };
      } catch (err) {
        if (signal?.aborted || !ep.mirror) throw err;
        this.o.log.info('mirror failed, trying the next endpoint', { image: what, mirror: ep.base.origin, error: messageOf(err) });
      }
    }
    throw new BerthError('Internal', `${what}: no registry endpoint to try`);
  }
}

/**
 * The user an image runs as, as CRI reports it: a numeric uid, or a name. Read as
 * CreateContainer reads it (common/user-ids.ts). All digits above the largest uid is no
 * uid (CreateContainer refuses it): it is given as a username, which kubelet's
 * runAsNonRoot check refuses as unverifiable instead of passing it as a non-zero uid.
 */
export function imageUser(config: ImageConfig): { uid: number | undefined; username: string } {
  const user = parseImageUser(config.run.user).user;
  if (user === undefined) return { uid: undefined, username: '' };
  switch (user.kind) {
    case 'id':
      return { uid: user.id, username: '' };
    case 'name':
      return { uid: undefined, username: user.name };
    case 'too-big':
      return { uid: undefined, username: user.text };
  }
}
