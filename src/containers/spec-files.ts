/**
 * Reading what a container's spec needs from files: the Localhost seccomp profile a
 * container names on the node, and the image's /etc/passwd and /etc/group (through the
 * container's rootfs, never through a symlink that leads out of it), kept per image.
 */
import { constants, type Stats } from 'node:fs';
import { open } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { BerthError, messageOf } from '../common/errors.js';
import { walkInRoot, type InRoot } from './in-root.js';
import type { CriContainerConfig } from './spec.js';

/** Bytes of /etc/passwd or /etc/group berth reads from an image. */
const MAX_ID_FILE = 1 << 20;
/** Images whose passwd and group are kept, and the most bytes kept for one. */
const ID_FILES_CACHE_ENTRIES = 64;
const ID_FILES_CACHED_MAX = 64 * 1024;

export interface IdFiles {
  passwd: string;
  group: string;
}

/**
 * /etc/passwd and /etc/group of images, by image id (a config digest, so fixed content):
 * with them known, a container's spec need not wait for its rootfs mount. An image whose
 * passwd or group is no regular file is refused, and that is kept too.
 */
export class IdFilesCache {
  private readonly byImage = new Map<string, IdFiles | BerthError>();

  /** What is known of an image's files; throws the refusal of an image known to be refused. */
  get(imageId: string): IdFiles | undefined {
    const hit = this.byImage.get(imageId);
    if (hit instanceof BerthError) throw new BerthError(hit.kind, hit.message);
    return hit;
  }

  /**
   * An image's passwd and group, read through a container's freshly mounted rootfs; small
   * ones are kept. FailedPrecondition when either exists and is not a regular file.
   */
  async read(imageId: string, rootfs: string): Promise<IdFiles> {
    const [passwd, group] = await Promise.all(ID_FILES.map((rel) => readIdFile(rootfs, rel)));
    const refusal = [passwd, group].find((f) => f instanceof BerthError);
    if (refusal) {
      this.keep(imageId, refusal);
      throw new BerthError(refusal.kind, refusal.message);
    }
    const files = { passwd: passwd as string, group: group as string };
    if (files.passwd.length + files.group.length <= ID_FILES_CACHED_MAX) this.keep(imageId, files);
    return files;
  }

  private keep(imageId: string, v: IdFiles | BerthError): void {
    if (this.byImage.size >= ID_FILES_CACHE_ENTRIES) this.byImage.delete(this.byImage.keys().next().value!);
    this.byImage.set(imageId, v);
  }
}

const ID_FILES = ['etc/passwd', 'etc/group'] as const;

/**
 * An image's /etc/passwd or /etc/group, resolved inside the rootfs in one walk: the
 * refusal of one that exists and is not a regular file, else its text ('' when absent
 * or unreadable).
 */
async function readIdFile(rootfs: string, rel: string): Promise<string | BerthError> {
  // Unreadable to berthd (root): the runtime will say what it makes of it.
  const r = await walkOrNone(rootfs, rel);
  return r === undefined ? '' : (idFileRefusal(rootfs, rel, r) ?? readFound(r, MAX_ID_FILE));
}

/** `rel` walked to inside the rootfs; undefined when the walk failed (not for a missing file). */
async function walkOrNone(rootfs: string, rel: string): Promise<InRoot | undefined> {
  try {
    return await walkInRoot(rootfs, rel);
  } catch {
    return undefined;
  }
}

/** What a non-regular file is, for messages. */
function kindOf(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  if (st.isDirectory()) return 'a directory';
  return 'not a regular file';
}

/**
 * Why the container cannot be made with this /etc/passwd or /etc/group (`r`, its walk
 * inside the rootfs, as the container sees it), if it cannot: it exists and is not a
 * regular file. runc (1.1) opens both inside the container at create whatever the user
 * (a numeric one too): on a FIFO it would wait for a writer until CreateContainer's
 * timeout, and a device node would be read through.
 */
function idFileRefusal(rootfs: string, rel: string, r: InRoot): BerthError | undefined {
  if (!r.found || r.stats.isFile()) return undefined;
  const shown = r.path === join(rootfs, rel) ? `/${rel}` : `/${rel} (resolved to /${relative(rootfs, r.path)})`;
  return new BerthError(
    'FailedPrecondition',
    `the image's ${shown} is ${kindOf(r.stats)}, not a regular file: the OCI runtime reads /etc/passwd and /etc/group ` +
      'when it creates the container and would block or read a device there; rebuild the image with a regular file (or none) at that path',
  );
}

/** Bytes of a Localhost seccomp profile berth reads. */
const MAX_SECCOMP_PROFILE = 1 << 20;

/**
 * Reads the Localhost seccomp profile a container names (kubelet passes its absolute
 * path on the node) so that the pure spec generator can embed it.
 */
export async function localhostSeccompProfiles(cfg: CriContainerConfig): Promise<Record<string, unknown>> {
  const sec = cfg.linux?.security_context?.seccomp;
  if (sec?.profile_type !== 'Localhost' || !sec.localhost_ref) return {};
  const ref = sec.localhost_ref;
  const path = ref.startsWith('localhost/') ? ref.slice('localhost/'.length) : ref;
  if (!path.startsWith('/')) throw new BerthError('InvalidArgument', `seccomp localhost_ref "${ref}" must be an absolute path on the node`);
  let text: string;
  try {
    // Non-blocking: a FIFO there must not hold a libuv pool thread; only a regular file is read.
    const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
    try {
      if (!(await fh.stat()).isFile()) throw new BerthError('InvalidArgument', `seccomp profile ${path} (localhost_ref) is not a regular file`);
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

/**
 * Reads a small file of the image (passwd, group): '' when absent, bounded in size, and
 * resolved inside the rootfs as the container sees it (in-root.ts: an image must not make
 * berthd read a host file). Only a regular file is read: a FIFO, socket or device node the
 * image put there counts as absent (berthd is host root: opening a FIFO would block a
 * libuv pool thread until a writer came, and a device node would be the host's device).
 * The node is checked before it is opened (opening a device runs its driver) and again
 * on the open fd, which is opened non-blocking and without following a last symlink.
 */
export async function readImageFile(rootfs: string, rel: string, max: number): Promise<string> {
  const r = await walkOrNone(rootfs, rel);
  return r === undefined ? '' : readFound(r, max);
}

/** {@link readImageFile} of a file already walked to (`r`). */
async function readFound(r: InRoot, max: number): Promise<string> {
  if (!r.found || !r.stats.isFile()) return '';
  let fh;
  try {
    fh = await open(r.path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW | constants.O_NOCTTY);
  } catch {
    return '';
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return '';
    const buf = Buffer.alloc(Math.min(st.size, max));
    let n = 0;
    while (n < buf.length) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    return buf.subarray(0, n).toString('utf8');
  } finally {
    await fh.close();
  }
}
