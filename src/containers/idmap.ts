/**
 * Mounts of a container that runc 1.1 cannot make, prepared by berthd before runc sees
 * the bundle (with the native addon's cloneMount: open_tree, mount_setattr, move_mount):
 *
 * - In a pod with its own user namespace (sandbox/userns.ts), the rootfs: overlayfs
 *   itself cannot be idmapped, but its lower layers can. Each lower layer is bound,
 *   idmapped through the pod's user namespace and read-only, at `<dir>/l<n>`, and the
 *   overlay is mounted on those: a file owned by 0 in the image shows as the pod's host
 *   root id, so as 0 inside the pod. The upper layer is not idmapped (overlayfs, mounted
 *   by host root, must create its work files there as an unmapped id); what the pod
 *   writes lands in it with the pod's host ids, and its root is given to the pod's root.
 * - CRI mounts with uidMappings/gidMappings (what kubelet sends for the volumes of a pod
 *   with hostUsers: false): an idmapped bind at `<dir>/m<n>`, through the pod's user
 *   namespace when the mappings are the pod's, else through a user namespace made for
 *   the mount (the mount keeps it alive). A mount without mappings stays a plain bind:
 *   what the pod's root writes there is owned by its host id.
 * - CRI mounts with recursive_read_only: a bind of the whole tree at `<dir>/m<n>`,
 *   read-only on every submount.
 * runc is then given a plain bind of the prepared mount. The directory lives under
 * berthd's state dir, apart from the bundle (which is removed recursively); release()
 * unmounts everything under it before anything is deleted.
 */
import { constants, readFileSync } from 'node:fs';
import { chmod, chown, lstat, mkdir, open, readdir, rm, rmdir, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { BerthError, errnoOf, invalidArgument, messageOf } from '../common/errors.js';
import { cloneMount, MNT, umount } from '../common/mount.js';
import { pinUserns, type IdMap } from '../common/userns.js';
import type { OciIdMapping, OciMount, OciNamespace } from '../oci/spec.js';
import type { PodContainerView } from '../sandbox/pod-facts.js';
import { hostIdOf, type CriIdMapping } from '../sandbox/userns.js';
import { isImageVolume } from './image-volumes.js';
import { cleanPath, type CriMount } from './mounts.js';

/** A pod's user namespace as its containers join it. */
export interface PodIdmap {
  usernsPath: string;
  uids: IdMap[];
  gids: IdMap[];
}

/** The user namespace of a pod, from the view it gives its containers; undefined when it runs in the host's. */
export function podIdmapOf(pod: PodContainerView): PodIdmap | undefined {
  return pod.userns ? { usernsPath: pod.userns.path, uids: pod.userns.uids, gids: pod.userns.gids } : undefined;
}

/** What a CRI mount needs prepared: `index` into the CRI mounts. */
interface MountPlan {
  index: number;
  mount: CriMount;
  recursiveReadOnly: boolean;
  idmap?: { uids: IdMap[]; gids: IdMap[]; pod: boolean };
}

const sameMaps = (a: readonly IdMap[], b: readonly IdMap[]): boolean =>
  a.length === b.length && a.every((m, i) => m.containerId === b[i]!.containerId && m.hostId === b[i]!.hostId && m.size === b[i]!.size);

/**
 * Checks the CRI mounts' recursive_read_only and id mappings and says which need
 * preparing; pure, so a bad request is refused before anything is made.
 */
export function planMounts(mounts: readonly CriMount[], pod: PodIdmap | undefined): MountPlan[] {
  const plans: MountPlan[] = [];
  for (const [index, m] of mounts.entries()) {
    // Image volumes are berthd's own read-only overlays (image-volumes.ts).
    if (isImageVolume(m)) continue;
    const field = `mounts[${index}]`;
    const recursiveReadOnly = m.recursive_read_only === true;
    if (recursiveReadOnly && !m.readonly) throw invalidArgument(`${field}.recursive_read_only needs readonly to be true`);
    if (recursiveReadOnly && (m.propagation ?? 'PROPAGATION_PRIVATE') !== 'PROPAGATION_PRIVATE') {
      throw invalidArgument(`${field}.recursive_read_only needs propagation PROPAGATION_PRIVATE, not ${m.propagation}`);
    }
    const uidMaps = m.uidMappings ?? [];
    const gidMaps = m.gidMappings ?? [];
    let idmap: MountPlan['idmap'];
    if (uidMaps.length > 0 || gidMaps.length > 0) {
      if (!pod) throw invalidArgument(`${field}.uidMappings/gidMappings: the pod has no user namespace of its own (userns_options mode POD)`);
      if ((m.propagation ?? 'PROPAGATION_PRIVATE') !== 'PROPAGATION_PRIVATE') {
        throw invalidArgument(`${field}: an idmapped mount (uidMappings/gidMappings) needs propagation PROPAGATION_PRIVATE, not ${m.propagation}`);
      }
      const uids = mountMaps(uidMaps, `${field}.uidMappings`);
      const gids = mountMaps(gidMaps, `${field}.gidMappings`);
      idmap = { uids, gids, pod: sameMaps(uids, pod.uids) && sameMaps(gids, pod.gids) };
    }
    if (recursiveReadOnly || idmap) plans.push({ index, mount: m, recursiveReadOnly, ...(idmap ? { idmap } : {}) });
  }
  return plans;
}

function mountMaps(list: CriIdMapping[], field: string): IdMap[] {
  if (list.length === 0) throw invalidArgument(`${field}: both uidMappings and gidMappings are needed for an idmapped mount`);
  return list.map((m, i) => {
    if (!(m.length > 0)) throw invalidArgument(`${field}[${i}].length is ${m.length}`);
    return { containerId: m.container_id, hostId: m.host_id, size: m.length };
  });
}

/** The mounts prepared for one container, under one directory of their own. */
export class PreparedMounts {
  /** Prepared source by CRI mount index. */
  private readonly sources = new Map<number, string>();

  constructor(
    readonly dir: string,
    readonly pod: PodIdmap | undefined,
  ) {}

  /** Nothing to prepare: no user namespace and no mount that needs it. */
  static needed(pod: PodIdmap | undefined, plans: readonly MountPlan[]): boolean {
    return pod !== undefined || plans.length > 0;
  }

  /**
   * The overlay options of the rootfs: unchanged without a pod user namespace; else with
   * each lowerdir replaced by its idmapped bind, and the upper dir's root given to the pod's root.
   */
  async rootfsOptions(options: string): Promise<string> {
    if (!this.pod) return options;
    await mkdir(this.dir, { recursive: true, mode: 0o711 });
    const parts = options.split(',');
    const out: string[] = [];
    for (const part of parts) {
      if (part.startsWith('lowerdir=')) {
        const lowers = part.slice('lowerdir='.length).split(':');
        const mapped: string[] = [];
        for (const [n, lower] of lowers.entries()) {
          const target = join(this.dir, `l${n}`);
          await mkdir(target);
          await this.bind(lower, target, { readonly: true, usernsPath: this.pod.usernsPath }, `lower layer ${lower}`);
          mapped.push(target);
        }
        out.push(`lowerdir=${mapped.join(':')}`);
      } else {
        if (part.startsWith('upperdir=')) {
          const uid = hostIdOf(this.pod.uids, 0)!;
          const gid = hostIdOf(this.pod.gids, 0)!;
          await chown(part.slice('upperdir='.length), uid, gid);
        }
        out.push(part);
      }
    }
    return out.join(',');
  }

  /** Makes the prepared CRI mounts of `plans`. */
  async mounts(plans: readonly MountPlan[]): Promise<void> {
    if (plans.length === 0) return;
    await mkdir(this.dir, { recursive: true, mode: 0o711 });
    for (const p of plans) {
      const field = `mounts[${p.index}]`;
      const source = p.mount.host_path;
      let isDir: boolean;
      try {
        isDir = (await stat(source)).isDirectory();
      } catch (err) {
        throw new BerthError('NotFound', `${field}.host_path ${source}: ${messageOf(err)}`, { cause: err });
      }
      const target = join(this.dir, `m${p.index}`);
      if (isDir) await mkdir(target);
      else await (await open(target, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o444)).close();
      let usernsPath: string | undefined;
      let tempPin: string | undefined;
      if (p.idmap?.pod) usernsPath = this.pod!.usernsPath;
      else if (p.idmap) {
        tempPin = join(this.dir, `u${p.index}`);
        await (await open(tempPin, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o444)).close();
        await pinUserns(tempPin, p.idmap.uids, p.idmap.gids).catch((err: unknown) => {
          throw invalidArgument(`${field}.uidMappings/gidMappings are refused by the kernel: ${messageOf(err)}`);
        });
        usernsPath = tempPin;
      }
      try {
        await this.bind(
          source,
          target,
          { recursive: true, readonly: p.recursiveReadOnly, ...(usernsPath ? { usernsPath } : {}) },
          `${field}.host_path ${source}`,
        );
      } finally {
        // The idmapped mount holds its user namespace; the pin is no longer needed.
        if (tempPin) await detachAndRemove(tempPin);
      }
      this.sources.set(p.index, target);
    }
  }

  private async bind(source: string, target: string, opts: Parameters<typeof cloneMount>[2], what: string): Promise<void> {
    try {
      await cloneMount(source, target, opts);
    } catch (err) {
      const how = opts?.usernsPath ? 'an idmapped' : 'a recursive read-only';
      const hint = errnoOf(err) === 'EINVAL' && opts?.usernsPath ? ' (its filesystem cannot be idmapped)' : '';
      throw new BerthError('FailedPrecondition', `${what}: making ${how} mount failed${hint}: ${messageOf(err)}`, { cause: err });
    }
  }

  /**
   * The container's spec, given the prepared mounts: each CRI bind whose source was
   * prepared now binds the prepared mount, and in a pod user namespace the spec joins it
   * (runc 1.1 wants the maps as well as the path).
   */
  applyToSpec(
    spec: { mounts?: OciMount[]; linux?: { namespaces?: OciNamespace[]; uidMappings?: OciIdMapping[]; gidMappings?: OciIdMapping[] } },
    mounts: readonly CriMount[],
  ): void {
    for (const [index, source] of this.sources) {
      const m = mounts[index]!;
      const dest = cleanPath(m.container_path);
      const oci = spec.mounts?.find((o) => o.type === 'bind' && o.destination === dest && o.source === m.host_path);
      if (oci) oci.source = source;
    }
    if (!this.pod) return;
    const linux = (spec.linux ??= {});
    linux.namespaces = [...(linux.namespaces ?? []).filter((n) => n.type !== 'user'), { type: 'user', path: this.pod.usernsPath }];
    const oci = (maps: IdMap[]): OciIdMapping[] => maps.map((e) => ({ containerID: e.containerId, hostID: e.hostId, size: e.size }));
    linux.uidMappings = oci(this.pod.uids);
    linux.gidMappings = oci(this.pod.gids);
  }
}

/**
 * runc 1.1 resolves the rootfs and bind sources as the container's root, so in a pod user
 * namespace (root is an unprivileged host id) every directory above them must be
 * searchable by others. berthd's own directories (under `own`) are made so (o+x: no
 * listing, and nothing in them becomes readable); any other is reported.
 */
export async function ensureTraversable(paths: readonly string[], own: readonly string[]): Promise<void> {
  for (const path of paths) {
    for (let d = dirname(path); ; d = dirname(d)) {
      const st = await stat(d);
      if ((st.mode & 0o001) === 0) {
        if (own.some((o) => d === o || d.startsWith(`${o}/`))) await chmod(d, (st.mode & 0o7777) | 0o001);
        else throw new BerthError('FailedPrecondition', `${d} is not searchable by others (o+x), so the root of a pod user namespace cannot reach ${path}`);
      }
      if (d === '/') break;
    }
  }
}

/** Unmounts everything under `dir` (deepest first) and removes what it holds; idempotent. */
export async function releasePreparedMounts(dir: string): Promise<void> {
  const prefix = `${dir}/`;
  try {
    // Most containers have no prepared mounts: without the dir, nothing can be mounted in
    // it (a dir holding a mount point cannot be removed), so mountinfo need not be read.
    try {
      await lstat(dir);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return;
      throw err;
    }
    for (let round = 0; round < 8; round++) {
      const points = readFileSync('/proc/self/mountinfo', 'utf8')
        .split('\n')
        .map((l) => l.split(' ')[4]?.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
        .filter((p): p is string => p !== undefined && p.startsWith(prefix))
        .sort((a, b) => b.length - a.length);
      if (points.length === 0) break;
      for (const p of points) {
        try {
          await umount(p, MNT.DETACH);
        } catch (err) {
          if (errnoOf(err) !== 'EINVAL') throw err; // EINVAL: already gone
        }
      }
    }
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return;
      throw err;
    }
    for (const name of names) {
      const p = join(dir, name);
      if ((await lstat(p)).isDirectory()) await rmdir(p);
      else await unlink(p);
    }
    await rmdir(dir);
  } catch (err) {
    throw new BerthError('Internal', `releasing the prepared mounts in ${dir}: ${messageOf(err)}`, { cause: err });
  }
}

async function detachAndRemove(path: string): Promise<void> {
  await umount(path, MNT.DETACH).catch(() => undefined);
  await rm(path, { force: true });
}
