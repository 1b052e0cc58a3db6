/**
 * Start-up probes for the mounts berth prepares itself because runc 1.1 cannot: an
 * idmapped bind (user namespaces, KEP-127) and a recursive read-only bind. Each makes the
 * real thing in a scratch directory, on a tmpfs (the filesystem of pod volumes' emptyDir
 * medium Memory, and one that must support idmapping for the probe to say yes), checks
 * what it sees, and removes everything. A feature is reported only when its probe passed.
 */
import { chown, mkdir, mkdtemp, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { messageOf } from './errors.js';
import { canonicalPath, cloneMount, MNT, mount, mountPoints, umount } from './mount.js';
import { pinUserns } from './userns.js';

export interface ProbeResult {
  ok: boolean;
  /** Why not, when not. */
  reason?: string;
}

const PROBE_MAP = [{ containerId: 0, hostId: 1_000_000, size: 65536 }];

/** Runs `body` in a fresh directory under `scratch` holding a tmpfs at `<dir>/src`; unmounts and removes all of it after. */
async function inScratch(scratch: string, body: (dir: string, made: string[]) => Promise<ProbeResult>): Promise<ProbeResult> {
  await mkdir(scratch, { recursive: true, mode: 0o700 });
  const dir = await mkdtemp(join(scratch, 'probe-'));
  const made: string[] = [];
  try {
    await mkdir(join(dir, 'src'));
    await mount('tmpfs', join(dir, 'src'), 'tmpfs', 0, 'size=64k');
    made.push(join(dir, 'src'));
    return await body(dir, made);
  } catch (err) {
    return { ok: false, reason: messageOf(err) };
  } finally {
    for (const p of made.reverse()) await umount(p, MNT.DETACH).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    await rmdir(scratch).catch(() => undefined); // gone unless another probe is running
  }
}

/**
 * User namespaces with idmapped mounts: a pinned user namespace, and an idmapped bind of a
 * tmpfs through it shows a file owned by 0 as the mapped host id.
 */
export function probeIdmappedMounts(scratch: string): Promise<ProbeResult> {
  return inScratch(scratch, async (dir, made) => {
    const pin = join(dir, 'user');
    await writeFile(pin, '');
    await pinUserns(pin, PROBE_MAP, PROBE_MAP);
    made.unshift(pin);
    await writeFile(join(dir, 'src', 'f'), '');
    await chown(join(dir, 'src', 'f'), 0, 0);
    await mkdir(join(dir, 'dst'));
    await cloneMount(join(dir, 'src'), join(dir, 'dst'), { usernsPath: pin });
    made.push(join(dir, 'dst'));
    const uid = (await stat(join(dir, 'dst', 'f'))).uid;
    return uid === PROBE_MAP[0]!.hostId ? { ok: true } : { ok: false, reason: `an idmapped mount showed uid ${uid}, not ${PROBE_MAP[0]!.hostId}` };
  });
}

/** Recursive read-only mounts: a recursive read-only bind of a tree makes its submount read-only too. */
export function probeRecursiveReadOnly(scratch: string): Promise<ProbeResult> {
  return inScratch(scratch, async (dir, made) => {
    await mkdir(join(dir, 'top'));
    await mkdir(join(dir, 'top', 'sub'));
    await mount(join(dir, 'src'), join(dir, 'top', 'sub'), '', 4096 /* MS_BIND */);
    made.push(join(dir, 'top', 'sub'));
    await mkdir(join(dir, 'dst'));
    await cloneMount(join(dir, 'top'), join(dir, 'dst'), { recursive: true, readonly: true });
    made.push(join(dir, 'dst', 'sub'), join(dir, 'dst'));
    try {
      await writeFile(join(dir, 'dst', 'sub', 'f'), '');
      return { ok: false, reason: 'a submount of a recursive read-only bind was writable' };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EROFS') return { ok: true };
      throw err;
    }
  });
}

/** The results of both mount probes. */
export interface MountFeatures {
  idmappedMounts: ProbeResult;
  recursiveReadOnly: ProbeResult;
}

let probed: Promise<MountFeatures> | undefined;

/**
 * Both probes, run once per process (one after the other: they share `scratch`); every
 * caller (Status, RunPodSandbox) gets the same verdict.
 */
export function mountFeatures(scratch: string): Promise<MountFeatures> {
  probed ??= (async () => ({ idmappedMounts: await probeIdmappedMounts(scratch), recursiveReadOnly: await probeRecursiveReadOnly(scratch) }))();
  return probed;
}

/**
 * Removes what a probe interrupted by a crash left in `scratch` (its mounts, deepest
 * first, then the files). Start-up recovery calls it before anything can probe.
 */
export async function cleanProbeScratch(scratch: string): Promise<void> {
  const root = `${canonicalPath(scratch)}/`;
  const left = mountPoints()
    .filter((p) => p.startsWith(root))
    .sort((a, b) => b.length - a.length);
  for (const p of left) await umount(p, MNT.DETACH).catch(() => undefined);
  await rm(scratch, { recursive: true, force: true });
}
