/**
 * Writes the entries of one layer into its snapshot directory, in overlay form and
 * without ever creating or changing anything outside it (see unpack.ts for the rules).
 * Filesystem metadata calls are synchronous on purpose: each is one short syscall on a
 * local disk, and a thread-pool round trip costs more than the call (it doubles the
 * rate for layers of many small files). Only the data of big files is written
 * asynchronously, so decompression and disk writes overlap.
 */
import * as fs from 'node:fs';
import type { Header } from 'tar-stream';
import { errnoOf } from '../../common/errors.js';
import { SYNC_WRITE_MAX, writeEntryData, writeEntryDataSync } from './entry-data.js';
import { mknod } from './host-tools.js';
import { OverlayMarks } from './overlay-marks.js';
import { writeSparse } from './sparse-writer.js';
import type { SparseMember } from './sparse.js';
import { depth, fsError, normalize, OPAQUE_MARKER, unsafe, type EntryStream, type Metadata, type Times, type Xattrs } from './tar-entry.js';
import { XattrBatch } from './xattr-batch.js';

const OPEN_NEW_FILE = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;

/** The snapshot directory of one unpack, entry by entry. */
export class LayerWriter {
  /** Bytes of regular-file content written. */
  fileBytes = 0;
  /**
   * Directories created because an entry's path needs them, though the layer lists none:
   * each is an inode like any entry, so they count against the layer's limits.
   */
  implicitDirectories = 0;
  /** Xattrs applied in batches (one setfattr per batch, after chown, which clears capabilities). */
  readonly xattrs: XattrBatch;
  /** Relative paths ('' is the root) known to be real directories, not symlinks. */
  private readonly dirs = new Set<string>(['']);
  private readonly marks: OverlayMarks;
  /** Directory times, applied at the end because creating children changes them. */
  private readonly dirTimes = new Map<string, Times>();

  constructor(
    private readonly root: string,
    private readonly layer: string,
    /** Called before each implicit directory is made; throws to refuse it (a limit). */
    private readonly beforeImplicitDirectory: () => void = () => undefined,
  ) {
    this.xattrs = new XattrBatch((rel) => this.abs(rel), layer);
    this.marks = new OverlayMarks(root, layer);
  }

  private abs(rel: string): string {
    return rel === '' ? this.root : `${this.root}/${rel}`;
  }

  /**
   * Makes every parent of `parts` a real directory: missing ones are created (0755,
   * root), whiteouts this layer made are turned into opaque directories, symlinks and
   * other files are refused.
   */
  private ensureParents(parts: readonly string[], name: string): void {
    const n = parts.length - 1;
    if (n <= 0 || this.dirs.has(parts.slice(0, n).join('/'))) return;
    let rel = '';
    for (let i = 0; i < n; i++) {
      rel = i === 0 ? (parts[0] as string) : `${rel}/${parts[i] as string}`;
      if (this.dirs.has(rel)) continue;
      const path = this.abs(rel);
      const st = fs.lstatSync(path, { throwIfNoEntry: false });
      if (st === undefined) {
        this.implicitDirectory(path);
      } else if (st.isSymbolicLink()) {
        throw unsafe(this.layer, `entry ${JSON.stringify(name)} would be written through the symlink ${JSON.stringify(rel)}`);
      } else if (!st.isDirectory()) {
        if (!this.marks.isWhiteout(rel)) {
          const needs = `needs ${JSON.stringify(rel)} to be a directory, but it is not`;
          throw unsafe(this.layer, `entry ${JSON.stringify(name)} ${needs}`);
        }
        // Deleted in a lower layer and recreated here: only this layer's content shows.
        fs.unlinkSync(path);
        this.implicitDirectory(path);
        this.marks.whiteoutBecameDirectory(rel);
      }
      this.dirs.add(rel);
    }
  }

  private implicitDirectory(path: string): void {
    this.beforeImplicitDirectory();
    fs.mkdirSync(path, 0o755);
    this.implicitDirectories++;
    // Explicitly, so neither the umask nor a setgid parent decides.
    fs.lchownSync(path, 0, 0);
    fs.chmodSync(path, 0o755);
  }

  /**
   * Creates the node of a new entry with `make`, which must fail with EEXIST rather
   * than follow anything already at the path (O_EXCL, mkdir, symlink, link do). What an
   * earlier entry left there is removed and `make` retried, except that an existing
   * directory is kept for a directory entry. Trying first saves an lstat per entry.
   */
  private async create(parts: readonly string[], name: string, isDir: boolean, make: () => void): Promise<void> {
    this.ensureParents(parts, name);
    try {
      return make();
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
    }
    if (await this.clear(parts, isDir)) make();
  }

  /** Removes whatever is at the path of a new entry; false if a directory is kept for a directory. */
  private async clear(parts: readonly string[], isDir: boolean): Promise<boolean> {
    const rel = parts.join('/');
    const st = fs.lstatSync(this.abs(rel), { throwIfNoEntry: false });
    if (st === undefined) return true;
    if (isDir && st.isDirectory()) return false;
    // Deleted in a lower layer and recreated here: only this layer's content shows.
    const becomesOpaque = isDir && this.marks.isWhiteout(rel);
    await this.remove(rel, st.isDirectory());
    if (becomesOpaque) this.marks.markOpaque(rel);
    return true;
  }

  /** Removes a path this layer created earlier, and forgets what was pending for it. */
  private async remove(rel: string, isDir: boolean): Promise<void> {
    const prefix = `${rel}/`;
    const under = (key: string): boolean => key === rel || (isDir && key.startsWith(prefix));
    // The inode may live on through a hardlink, so its xattrs are applied now.
    if (this.xattrs.has(under)) await this.xattrs.flush();
    const path = this.abs(rel);
    if (isDir) fs.rmSync(path, { recursive: true, force: true });
    else fs.unlinkSync(path);
    if (isDir) for (const key of this.dirs) if (under(key)) this.dirs.delete(key);
    this.dirs.delete(rel);
    this.marks.forget(rel, isDir ? under : undefined);
    if (isDir) for (const key of this.dirTimes.keys()) if (under(key)) this.dirTimes.delete(key);
    this.dirTimes.delete(rel);
  }

  rootDirectory(meta: Metadata, xattrs: Xattrs): void {
    fs.lchownSync(this.root, meta.uid, meta.gid);
    fs.chmodSync(this.root, meta.mode);
    this.dirTimes.set('', meta.times);
    this.xattrs.queue('', xattrs);
  }

  async directory(parts: readonly string[], name: string, meta: Metadata, xattrs: Xattrs): Promise<void> {
    const rel = parts.join('/');
    const path = this.abs(rel);
    await this.create(parts, name, true, () => fs.mkdirSync(path, 0o700));
    this.dirs.add(rel);
    fs.lchownSync(path, meta.uid, meta.gid);
    fs.chmodSync(path, meta.mode); // after chown, which clears setgid
    this.dirTimes.set(rel, meta.times);
    this.xattrs.queue(rel, xattrs);
  }

  /** A regular file; a sparse one (see sparse.ts) is written with its holes kept. */
  async file(parts: readonly string[], name: string, meta: Metadata, data: EntryStream, xattrs: Xattrs, sparse?: SparseMember): Promise<void> {
    const rel = parts.join('/');
    const path = this.abs(rel);
    let fd = -1;
    await this.create(parts, name, false, () => (fd = fs.openSync(path, OPEN_NEW_FILE, 0o600)));
    try {
      if (sparse) this.fileBytes += await writeSparse(fd, data, sparse, meta.size);
      else this.fileBytes += meta.size <= SYNC_WRITE_MAX ? await writeEntryDataSync(fd, data) : await writeEntryData(fd, data);
      fs.fchownSync(fd, meta.uid, meta.gid);
      fs.fchmodSync(fd, meta.mode); // after chown, which clears setuid and setgid
      fs.futimesSync(fd, meta.times[0], meta.times[1]);
    } finally {
      fs.closeSync(fd);
    }
    this.xattrs.queue(rel, xattrs);
  }

  async symlink(parts: readonly string[], name: string, target: string | null, meta: Metadata, xattrs: Xattrs): Promise<void> {
    const rel = parts.join('/');
    if (!target) throw unsafe(this.layer, `symlink ${JSON.stringify(name)} has an empty target`);
    const path = this.abs(rel);
    await this.create(parts, name, false, () => fs.symlinkSync(target, path));
    fs.lchownSync(path, meta.uid, meta.gid);
    fs.lutimesSync(path, meta.times[0], meta.times[1]);
    this.xattrs.queue(rel, xattrs);
  }

  /** A hardlink shares its target's inode, owner, mode, times and xattrs: nothing more to set. */
  async hardlink(parts: readonly string[], name: string, linkname: string | null): Promise<void> {
    const what = `hardlink ${JSON.stringify(name)}`;
    if (!linkname) throw unsafe(this.layer, `${what} has an empty target`);
    if (linkname.startsWith('/')) {
      throw unsafe(this.layer, `${what} points to the absolute path ${JSON.stringify(linkname)}, outside the snapshot`);
    }
    const targetParts = normalize(linkname, what, this.layer);
    const rel = parts.join('/');
    const targetRel = targetParts.join('/');
    const missing = unsafe(this.layer, `${what} points to ${JSON.stringify(linkname)}, which this layer does not contain`);
    if (targetRel === rel) throw unsafe(this.layer, `${what} points to itself`);
    if (!this.existingParents(targetParts, what)) throw missing;
    const st = fs.lstatSync(this.abs(targetRel), { throwIfNoEntry: false });
    if (st === undefined || targetRel === '') throw missing;
    if (st.isDirectory()) throw unsafe(this.layer, `${what} points to the directory ${JSON.stringify(linkname)}`);
    // link(2) does not follow a symlink in its last component, and the parents are real directories.
    try {
      await this.create(parts, name, false, () => fs.linkSync(this.abs(targetRel), this.abs(rel)));
    } catch (err) {
      // Replacing the entry's path removed the target (it lived below it).
      if (errnoOf(err) === 'ENOENT') throw missing;
      throw err;
    }
  }

  /** Whether every parent of `parts` is a real directory (never creating one). */
  private existingParents(parts: readonly string[], what: string): boolean {
    let rel = '';
    for (let i = 0; i < parts.length - 1; i++) {
      rel = i === 0 ? (parts[0] as string) : `${rel}/${parts[i] as string}`;
      if (this.dirs.has(rel)) continue;
      const st = fs.lstatSync(this.abs(rel), { throwIfNoEntry: false });
      if (st?.isSymbolicLink()) throw unsafe(this.layer, `${what} points through the symlink ${JSON.stringify(rel)}`);
      if (!st?.isDirectory()) return false;
      this.dirs.add(rel);
    }
    return true;
  }

  async specialFile(
    parts: readonly string[],
    name: string,
    type: 'character-device' | 'block-device' | 'fifo',
    header: Header,
    meta: Metadata,
    xattrs: Xattrs,
  ): Promise<void> {
    const rel = parts.join('/');
    this.ensureParents(parts, name);
    await this.clear(parts, false); // cleared first: mknod is a separate tool
    const path = this.abs(rel);
    const args = type === 'fifo' ? [path, 'p'] : [path, type === 'character-device' ? 'c' : 'b', String(header.devmajor), String(header.devminor)];
    await mknod(args, this.layer);
    fs.lchownSync(path, meta.uid, meta.gid);
    fs.chmodSync(path, meta.mode); // path is the node just made, not a symlink
    fs.lutimesSync(path, meta.times[0], meta.times[1]);
    this.xattrs.queue(rel, xattrs);
  }

  /**
   * `.wh.<name>` → a 0:0 character device `<name>` beside it. Whiteouts are hardlinks of
   * one device made per layer, as overlayfs itself shares whiteout inodes: one mknod
   * process per layer instead of one per deleted file (their owner and times mean
   * nothing to overlayfs).
   */
  async whiteout(dirParts: readonly string[], hidden: string, name: string): Promise<void> {
    if (hidden === '' || hidden === '.' || hidden === '..') {
      throw unsafe(this.layer, `whiteout ${JSON.stringify(name)} names no valid entry`);
    }
    const parts = [...dirParts, hidden];
    const rel = parts.join('/');
    let device = await this.marks.device();
    const link = (): void => fs.linkSync(device, this.abs(rel));
    try {
      await this.create(parts, name, false, link);
    } catch (err) {
      if (errnoOf(err) !== 'EMLINK') throw err;
      device = await this.marks.newDevice();
      await this.create(parts, name, false, link);
    }
    this.marks.addWhiteout(rel);
  }

  /** `.wh..wh..opq` in D → D is opaque (D is created if the layer has not yet). */
  markOpaque(dirParts: readonly string[], name: string): void {
    this.ensureParents([...dirParts, OPAQUE_MARKER], name);
    this.marks.markOpaque(dirParts.join('/'));
  }

  async finish(): Promise<void> {
    this.marks.removeDevices();
    await this.xattrs.flush();
    await this.marks.applyOpaque((rel) => this.abs(rel));
    const byDepth = [...this.dirTimes].sort(([a], [b]) => depth(b) - depth(a));
    try {
      for (const [rel, [atime, mtime]] of byDepth) fs.lutimesSync(this.abs(rel), atime, mtime);
    } catch (err) {
      throw fsError(this.layer, err, 'setting directory times');
    }
  }
}
