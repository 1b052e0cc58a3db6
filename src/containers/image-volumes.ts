/**
 * Image volumes (Mount.image, KEP-4639): an image's filesystem mounted read-only into a
 * container, whole or one subdirectory of it (image_sub_path).
 *
 * berthd mounts the image's committed layer snapshots as an overlay with lowerdirs only
 * (no upper dir, so overlayfs makes it read-only) at `<dir>/image-<i>`, `<dir>` being the
 * container's directory of prepared mounts (idmap.ts); runc then gets a plain read-only
 * bind of that overlay, or of the sub path resolved inside it. overlayfs wants two
 * lowerdirs at least when there is no upper dir: a single-layer image gets an empty
 * directory beneath its layer, so its whiteouts are hidden as in a container's rootfs.
 *
 * In a pod with its own user namespace, each layer is first bound idmapped through it
 * (as the rootfs's lower layers are, idmap.ts), so the image's root-owned files show as
 * the pod's root.
 *
 * The use is recorded in the database (ImageService.useAsVolume) before the mount, with
 * the container's row already there, and goes with that row: while the container exists,
 * RemoveImage refuses the image and GC keeps its layers. The mounts are released with
 * everything else under `<dir>` (releasePreparedMounts), by a failed create's undo, by
 * RemoveContainer and by recovery's removal path.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { BerthError, invalidArgument, messageOf } from '../common/errors.js';
import { cloneMount, mount, MS } from '../common/mount.js';
import type { ImageService } from '../images/image-service.js';
import { walkInRoot } from './in-root.js';
import type { CriMount } from './mounts.js';

/** An image volume of a container: `index` into the CRI mounts. */
export interface ImageVolumePlan {
  index: number;
  /** The image as kubelet names it (Mount.image.image). */
  image: string;
  /** Relative path inside the image; '' for the whole image. */
  subPath: string;
}

/** Whether a CRI mount is an image volume. */
export function isImageVolume(m: CriMount): boolean {
  return (m.image?.image ?? '') !== '';
}

/**
 * Checks the image volumes of a container before anything is made: the fields, and that
 * each image is present (NotFound otherwise, so that kubelet pulls it and retries).
 */
export function planImageVolumes(mounts: readonly CriMount[], opts: { images: Pick<ImageService, 'find'> }): ImageVolumePlan[] {
  const plans: ImageVolumePlan[] = [];
  for (const [index, m] of mounts.entries()) {
    const field = `mounts[${index}]`;
    const subPath = m.image_sub_path ?? '';
    if (!isImageVolume(m)) {
      if (subPath !== '') throw invalidArgument(`${field}.image_sub_path is only valid with ${field}.image`);
      continue;
    }
    const image = m.image!.image;
    if (m.host_path !== '') throw invalidArgument(`${field}: host_path and image are exclusive (an image volume has no host path)`);
    checkSubPath(subPath, `${field}.image_sub_path`);
    if (!opts.images.find(image)) throw new BerthError('NotFound', `${field}.image: image "${image}" not found; pull it first`);
    plans.push({ index, image, subPath });
  }
  return plans;
}

function checkSubPath(p: string, field: string): void {
  if (p === '') return;
  if (p.includes('\0')) throw invalidArgument(`${field} contains a NUL byte`);
  if (p.startsWith('/')) throw invalidArgument(`${field} "${p}" must be a relative path`);
  if (p.split('/').includes('..')) throw invalidArgument(`${field} "${p}" must not contain ".." segments`);
}

/** The image volumes of one container, mounted under the container's directory of prepared mounts. */
export class ImageVolumes {
  /** What runc binds, by CRI mount index: the overlay, or the sub path inside it. */
  private readonly sources = new Map<number, string>();

  /** `usernsPath`: the pod's user namespace, through which the layers are idmapped. */
  constructor(
    readonly dir: string,
    private readonly images: Pick<ImageService, 'useAsVolume'>,
    private readonly usernsPath?: string,
  ) {}

  /**
   * Records each use and mounts each image; the container's row must exist. The caller
   * has deferred the release of `dir` before calling.
   */
  async mount(containerId: string, plans: readonly ImageVolumePlan[]): Promise<void> {
    if (plans.length === 0) return;
    await mkdir(this.dir, { recursive: true, mode: 0o711 });
    for (const p of plans) {
      const field = `mounts[${p.index}]`;
      const { image, lowerDirs } = this.images.useAsVolume(containerId, p.index, p.image);
      const root = join(this.dir, `image-${p.index}`);
      await mkdir(root);
      const lowers = this.usernsPath ? await this.idmapped(lowerDirs, p.index, this.usernsPath, field) : [...lowerDirs];
      if (lowers.length === 1) {
        const base = join(this.dir, `image-${p.index}-base`);
        await mkdir(base, { mode: 0o755 });
        lowers.push(base);
      }
      try {
        // Read-only only: nosuid or nodev would be locked in a pod user namespace, and runc's
        // read-only remount of the bind, which does not repeat them, would then fail (EPERM).
        // Setuid files and device nodes of the image then behave as in a rootfs.
        await mount('overlay', root, 'overlay', MS.RDONLY, `lowerdir=${lowers.join(':')}`);
      } catch (err) {
        throw new BerthError(
          err instanceof BerthError ? err.kind : 'Internal',
          `${field}.image: mounting image ${image.id} (overlay on ${root}): ${messageOf(err)}`,
          {
            cause: err,
          },
        );
      }
      this.sources.set(p.index, p.subPath === '' ? root : await resolveInRoot(root, p.subPath, `${field}.image_sub_path`, image.id));
    }
  }

  /** Binds each layer idmapped and read-only at `<dir>/image-<i>-l<n>`; returns those binds. */
  private async idmapped(lowerDirs: readonly string[], index: number, usernsPath: string, field: string): Promise<string[]> {
    const out: string[] = [];
    for (const [n, lower] of lowerDirs.entries()) {
      const target = join(this.dir, `image-${index}-l${n}`);
      await mkdir(target);
      try {
        await cloneMount(lower, target, { readonly: true, usernsPath });
      } catch (err) {
        throw new BerthError('FailedPrecondition', `${field}.image: making an idmapped mount of layer ${lower} failed: ${messageOf(err)}`, { cause: err });
      }
      out.push(target);
    }
    return out;
  }

  /** The container config with each image volume as a read-only bind of what was mounted. */
  applyToMounts<T extends { mounts: CriMount[] }>(config: T): T {
    if (this.sources.size === 0) return config;
    return { ...config, mounts: config.mounts.map((m, i) => (this.sources.has(i) ? { ...m, host_path: this.sources.get(i)!, readonly: true } : m)) };
  }
}

/**
 * Resolves `sub` inside `root` as if `root` were `/` (in-root.ts): an absolute symlink
 * restarts at `root`, `..` stops there, so nothing outside the image is reached. The
 * path must exist: a missing one is InvalidArgument, as kubelet expects the container's
 * creation to fail.
 */
export async function resolveInRoot(root: string, sub: string, field: string, imageId: string): Promise<string> {
  let r;
  try {
    r = await walkInRoot(root, sub);
  } catch (err) {
    throw new BerthError('Internal', `${field} "${sub}": ${messageOf(err)}`, { cause: err });
  }
  if (r.found) return r.path;
  if (r.why === 'loop') throw invalidArgument(`${field} "${sub}": too many symbolic links in image ${imageId}`);
  if (r.why === 'notDirectory') throw invalidArgument(`${field} "${sub}" does not exist in image ${imageId} (${r.name} is not a directory)`);
  throw invalidArgument(`${field} "${sub}" does not exist in image ${imageId}`);
}
