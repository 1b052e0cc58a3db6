/**
 * The limits a pull shares with the other unpacks in flight (src/images/pull-limits.ts),
 * with real unpacks on the unpack workers into an overlay snapshotter whose root is a
 * tmpfs of a known size and inode count (root). A layer whose blob is a FIFO stands for
 * one still downloading or decompressing: the test feeds it a little, runs another
 * unpack to the end meanwhile, then feeds it the rest.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../src/common/errors.js';
import { createLogger } from '../../../src/common/logger.js';
import { mount, umount } from '../../../src/common/mount.js';
import { defaultConfig, type ImagesConfig } from '../../../src/config/schema.js';
import { PullLimits } from '../../../src/images/pull-limits.js';
import { OverlaySnapshotter } from '../../../src/images/snapshots/overlay.js';
import { SnapshotRepository } from '../../../src/images/snapshots/snapshot-repository.js';
import type { PreparedSnapshot } from '../../../src/images/snapshots/snapshotter.js';
import { openDatabase, type Db } from '../../../src/store/database.js';
import { until } from '../../helpers/berthd.js';
import { makeTar } from '../../helpers/tar-layers.js';

const MiB = 1024 * 1024;
const log = createLogger('error', () => undefined);

interface Layer {
  name: string;
  digest: string;
  diffId: string;
  raw: Buffer;
}

/** An uncompressed layer of one file of `bytes` random bytes (`files` small files instead when given). */
async function layerOf(name: string, bytes: number, files = 0): Promise<Layer> {
  const entries =
    files > 0
      ? Array.from({ length: files }, (_, i) => ({ header: { name: `${name}/f${i}` }, content: '' }))
      : [{ header: { name: `${name}.bin` }, content: randomBytes(bytes) }];
  const raw = await makeTar(entries);
  const diffId = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
  return { name, digest: `sha256:${createHash('sha256').update(name).digest('hex')}`, diffId, raw };
}

describe('images: limits shared by the unpacks in flight', function () {
  this.timeout(120_000);
  let dir: string;
  /** The tmpfs: berthd's root (snapshots) and image filesystem. */
  let root: string;
  let mounted = false;
  let db: Db | undefined;
  let snap: OverlaySnapshotter | undefined;

  async function setUp(tmpfsOptions: string): Promise<OverlaySnapshotter> {
    dir = fs.mkdtempSync(join(tmpdir(), 'berth-pull-limits-'));
    root = join(dir, 'root');
    fs.mkdirSync(root);
    await mount('tmpfs', root, 'tmpfs', 0, tmpfsOptions);
    mounted = true;
    db = openDatabase(join(dir, 'berth.db'));
    snap = new OverlaySnapshotter(root, new SnapshotRepository(db), log);
    return snap;
  }
  /** FIFO writers still open (a failed test ends them, so no unpack waits on its blob). */
  const writers: fs.WriteStream[] = [];
  afterEach(async () => {
    for (const w of writers.splice(0)) w.destroy();
    await snap?.close();
    db?.close();
    snap = undefined;
    db = undefined;
    if (mounted) await umount(root);
    mounted = false;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const config = (images: Partial<ImagesConfig>): ImagesConfig => ({ ...defaultConfig().images, ...images });
  const snapshots = (): string[] => fs.readdirSync(join(root, 'snapshots'));

  /** A regular blob file outside the tmpfs. */
  function blobFile(layer: Layer): string {
    const path = join(dir, `${layer.digest.slice(7, 19)}.tar`);
    fs.writeFileSync(path, layer.raw);
    return path;
  }

  /** Unpacks a layer under `limits` as a pull does: granted as it goes, settled however it ends. */
  async function unpack(limits: PullLimits, layer: Layer, blobPath: string): Promise<PreparedSnapshot> {
    const allowance = limits.forLayer(layer.digest, layer.raw.length);
    let prepared: PreparedSnapshot;
    try {
      prepared = await snap!.extract({
        diffId: layer.diffId,
        layer: layer.digest,
        compression: 'none',
        blobPath,
        maxBytes: allowance.maxBytes,
        ...(allowance.limitText ? { limitText: allowance.limitText } : {}),
        grant: allowance.grant,
      });
    } catch (err) {
      allowance.settle();
      throw err;
    }
    allowance.settle(prepared.tarBytes);
    return prepared;
  }

  /**
   * Starts unpacking `layer` from a FIFO fed its first `first` bytes; resolves once they
   * are on disk. `rest()` feeds the remainder; `done` is the unpack.
   */
  async function startSlow(limits: PullLimits, layer: Layer, first: number): Promise<{ rest(): void; done: Promise<PreparedSnapshot> }> {
    const fifo = join(dir, `${layer.digest.slice(7, 19)}.fifo`);
    execFileSync('mkfifo', [fifo]);
    const before = new Set(snapshots());
    const done = unpack(limits, layer, fifo);
    done.catch(() => undefined); // observed by the test
    const w = fs.createWriteStream(fifo);
    writers.push(w);
    w.on('error', () => undefined); // EPIPE once a refused unpack closes its end
    w.write(layer.raw.subarray(0, first));
    await until(async () => {
      const id = snapshots().find((n) => !before.has(n));
      // The snapshot's dir, its fs dir and the file appear one after the other.
      const file = id && join(root, 'snapshots', id, 'fs', `${layer.name}.bin`);
      return file && fs.existsSync(file) && fs.statSync(file).size > first / 2 ? true : undefined;
    }, 60_000);
    return { rest: () => w.end(layer.raw.subarray(first)), done };
  }

  async function exhausted(p: Promise<unknown>, pattern: RegExp): Promise<string> {
    let message = '';
    await assert.rejects(p, (err: unknown) => {
      assert.ok(isKind(err, 'ResourceExhausted'), String(err));
      assert.match(err.message, pattern);
      message = err.message;
      return true;
    });
    return message;
  }

  const freeBytes = async (): Promise<number> => {
    const s = await statfs(root);
    return s.bavail * s.bsize;
  };

  describe('free space, node-wide', () => {
    const reserve = 16 * MiB;
    const images = config({ min_free_bytes: reserve, min_free_percent: 100 });

    it('bounds an unpack in flight by what another pull used meanwhile: together they never eat into the reserve', async () => {
      await setUp('size=64m');
      const slow = await layerOf('slow', 30 * MiB);
      const fast = await layerOf('fast', 30 * MiB);
      const a = await startSlow(new PullLimits(images, root, 'image a'), slow, MiB);
      const b = await unpack(new PullLimits(images, root, 'image b'), fast, blobFile(fast));
      a.rest();
      await exhausted(
        a.done,
        /^layer sha256:[0-9a-f]+: expands beyond the \d+ bytes the image filesystem can spare above the free-space reserve of 16777216 bytes \(the smaller of images\.min_free_bytes = 16777216 and images\.min_free_percent = 100%\)$/,
      );
      assert.deepEqual(snapshots(), [String(b.id)], 'the refused snapshot is gone');
      assert.ok((await freeBytes()) >= reserve, 'the reserve is left');
    });

    it('counts what an unpack in flight was granted and has not written yet against another pull', async () => {
      await setUp('size=64m');
      const slow = await layerOf('slow', 12 * MiB);
      const big = await layerOf('big', 45 * MiB);
      const a = await startSlow(new PullLimits(images, root, 'image a'), slow, MiB);
      // 47 MiB are free above the reserve, but the slow layer holds a grant beyond its 1 MiB.
      const message = await exhausted(
        unpack(new PullLimits(images, root, 'image b'), big, blobFile(big)),
        /expands beyond the \d+ bytes the image filesystem can spare, less the (\d+) bytes granted to other unpacks in flight, above the free-space reserve/,
      );
      assert.ok(Number(/less the (\d+) bytes/.exec(message)![1]) > 0);
      a.rest();
      const prepared = await a.done;
      assert.deepEqual(snapshots(), [String(prepared.id)], 'only the slow layer, whole');
      assert.equal(fs.statSync(join(prepared.dir, 'fs', 'slow.bin')).size, 12 * MiB);
    });
  });

  describe('the image cap, split among the layers of one pull', () => {
    it('never grants the layers in flight together more than what is left of images.max_image_bytes', async () => {
      await setUp('size=256m');
      const limits = new PullLimits(config({ max_image_bytes: 40 * MiB, min_free_bytes: 0 }), root, 'image');
      const slow = await layerOf('slow', 30 * MiB);
      const fast = await layerOf('fast', 30 * MiB);
      const a = await startSlow(limits, slow, MiB);
      const b = await unpack(limits, fast, blobFile(fast));
      a.rest();
      // Refused while it unpacks, at what the other layer left: not after writing all 30 MiB.
      const message = await exhausted(
        a.done,
        /^layer sha256:[0-9a-f]+: expands beyond images\.max_image_bytes \(41943040 bytes uncompressed per image; (\d+) were left for this layer\)$/,
      );
      const left = Number(/(\d+) were left/.exec(message)![1]);
      assert.ok(left <= 10 * MiB && left > 9 * MiB, `${left} bytes were left`);
      assert.deepEqual(snapshots(), [String(b.id)], 'the refused snapshot is gone');
    });
  });

  describe('free inodes', () => {
    const images = config({ min_free_bytes: 0, min_free_inodes: 1000, min_free_inodes_percent: 100 });

    it('refuses an unpack that would leave fewer free inodes than the reserve, leaving nothing', async () => {
      await setUp('size=64m,nr_inodes=3000');
      const before = (await statfs(root)).ffree;
      const many = await layerOf('many', 0, 2500);
      await exhausted(
        unpack(new PullLimits(images, root, 'image'), many, blobFile(many)),
        /^layer sha256:[0-9a-f]+: its entries need more inodes than the \d+ the image filesystem can spare above the free-inode reserve of 1000 \(the smaller of images\.min_free_inodes = 1000 and images\.min_free_inodes_percent = 100%\)$/,
      );
      assert.deepEqual(snapshots(), []);
      // tmpfs may count an inode free a moment after its unlink returns.
      await until(async () => ((await statfs(root)).ffree === before ? true : undefined), 10_000);
      const fewer = await layerOf('fewer', 0, 1500);
      const ok = await unpack(new PullLimits(images, root, 'image'), fewer, blobFile(fewer));
      assert.equal(ok.inodes, 1501, '1500 files and their implicit directory');
    });

    it('refuses a pull before its downloads when the filesystem is already below the reserve', async () => {
      await setUp('size=64m,nr_inodes=3000');
      const limits = new PullLimits(config({ min_free_bytes: 0, min_free_inodes: 10_000, min_free_inodes_percent: 100 }), root, 'image x');
      await exhausted(
        limits.checkDownloads(1024, 1),
        /^image x: the image filesystem has \d+ free inodes left for unpacking, less than the free-inode reserve of 3000 \(the smaller of images\.min_free_inodes = 10000 and images\.min_free_inodes_percent = 100%\)$/,
      );
    });

    it('keeps no inode reserve on a filesystem without an inode limit (it reports 0 inodes)', async () => {
      await setUp('size=64m,nr_inodes=0');
      assert.equal((await statfs(root)).files, 0, 'tmpfs with nr_inodes=0 reports no inode limit');
      const limits = new PullLimits(config({ min_free_bytes: 0, min_free_inodes: Number.MAX_SAFE_INTEGER, min_free_inodes_percent: 100 }), root, 'image');
      await limits.checkDownloads(1024, 1);
      const layer = await layerOf('files', 0, 100);
      assert.equal((await unpack(limits, layer, blobFile(layer))).inodes, 101);
    });
  });
});
