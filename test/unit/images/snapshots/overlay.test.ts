/**
 * The overlay snapshotter's bookkeeping in a temp dir, as any user: chains and their
 * lowerdir order, a container's active snapshot and its mount options (the mount itself
 * is the container service's), garbage collection that keeps what a live snapshot
 * stands on, and recovery. One extract unpacks a layer of the caller's own files (the
 * owners, devices and xattrs of real layers are test/integration/images/snapshots).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tar from 'tar-stream';
import { createLogger } from '../../../../src/common/logger.js';
import { MAX_MOUNT_DATA, mount } from '../../../../src/common/mount.js';
import { OverlaySnapshotter } from '../../../../src/images/snapshots/overlay.js';
import { SnapshotRepository } from '../../../../src/images/snapshots/snapshot-repository.js';
import { openDatabase, type Db } from '../../../../src/store/database.js';

const log = createLogger('error', () => undefined);

/** A tar of one directory and one file, owned by this process's user. */
async function layer(): Promise<Buffer> {
  const pack = tar.pack();
  const own = { uid: process.getuid!(), gid: process.getgid!(), mtime: new Date('2021-01-01T00:00:00Z') };
  pack.entry({ name: 'etc', type: 'directory', mode: 0o755, ...own });
  pack.entry({ name: 'etc/motd', mode: 0o644, ...own }, 'hi\n');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('images: overlay snapshotter', () => {
  let dir: string;
  let db: Db;
  let repo: SnapshotRepository;
  let snap: OverlaySnapshotter;
  const snapshotsDir = (): string => join(dir, 'snapshots');

  /** A committed snapshot `chainId` on `parent`, made without unpacking. */
  function committed(chainId: string, parent?: string): number {
    const id = repo.prepare();
    const d = join(snapshotsDir(), String(id));
    mkdirSync(join(d, 'fs'), { recursive: true });
    return snap.commit({ id, dir: d, sizeBytes: 4096, inodes: 1, tarBytes: 1024 }, chainId, parent).id;
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-overlay-'));
    db = openDatabase(join(dir, 'berth.db'));
    repo = new SnapshotRepository(db);
    snap = new OverlaySnapshotter(dir, repo, log);
  });
  afterEach(async () => {
    await snap.close();
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('keeps the snapshots dir 0700 at every start, even one an operator or an older berth left 0755', async () => {
    assert.equal(statSync(snapshotsDir()).mode & 0o777, 0o700, 'made 0700');
    await snap.close();
    chmodSync(snapshotsDir(), 0o755);
    snap = new OverlaySnapshotter(dir, repo, log);
    assert.equal(statSync(snapshotsDir()).mode & 0o777, 0o700, 'closed again at the next start');
  });

  it('commits a chain and lists its fs dirs top first; refuses a parent that is not committed', () => {
    const a = committed('sha256:a');
    const b = committed('sha256:b', 'sha256:a');
    assert.deepEqual(snap.lowerDirs('sha256:b'), [join(snapshotsDir(), String(b), 'fs'), join(snapshotsDir(), String(a), 'fs')]);
    assert.equal(snap.committed('sha256:b')?.parentId, a);
    assert.throws(() => committed('sha256:c', 'sha256:nope'), { kind: 'Internal', message: 'snapshot sha256:c: parent sha256:nope is not committed' });
  });

  it('refuses a container on an image whose layers do not fit in the page of options mount(2) reads, making nothing', async () => {
    // The kernel would cut longer options silently: the last layers and the upperdir would go.
    let parent: string | undefined;
    let fits: string | undefined;
    for (let i = 0; i < 200; i++) {
      const chain = `sha256:${i}`;
      committed(chain, parent);
      parent = chain;
      const probe = `lowerdir=${snap.lowerDirs(chain).join(':')},upperdir=${join(snapshotsDir(), String(Number.MAX_SAFE_INTEGER))}/fs,workdir=${join(snapshotsDir(), String(Number.MAX_SAFE_INTEGER))}/work`;
      if (probe.length <= MAX_MOUNT_DATA) fits = chain;
    }
    const { options } = await snap.prepareActive('fits', fits!);
    assert.ok(options.length <= MAX_MOUNT_DATA);
    await assert.rejects(snap.prepareActive('too-many', parent!), {
      kind: 'FailedPrecondition',
      message: /^the image has 200 layers: the overlay mount of a container's rootfs would need \d+ bytes of options, over the 4095 mount\(2\) takes$/,
    });
    assert.equal(snap.activeDir('too-many'), undefined);
    assert.deepEqual(snap.activeDirs(), [snap.activeDir('fits')]);
    // And mount(2) itself never gets options it would cut.
    await assert.rejects(mount('overlay', join(dir, 'nowhere'), 'overlay', 0, 'x'.repeat(MAX_MOUNT_DATA + 1)), {
      kind: 'FailedPrecondition',
      message: /options are 4096 bytes, over the 4095 mount\(2\) takes/,
    });
  });

  it("makes a container's active snapshot with the overlay options, and removes it idempotently", async () => {
    committed('sha256:a');
    committed('sha256:b', 'sha256:a');
    const { info, options } = await snap.prepareActive('ctr1', 'sha256:b');
    const upper = join(info.dir, 'fs');
    assert.equal(options, `lowerdir=${snap.lowerDirs('sha256:b').join(':')},upperdir=${upper},workdir=${join(info.dir, 'work')}`);
    assert.equal(snap.activeDir('ctr1'), upper);
    assert.deepEqual(snap.activeDirs(), [upper]);
    assert.ok(existsSync(join(info.dir, 'work')));
    await assert.rejects(snap.prepareActive('ctr2', 'sha256:nope'), { kind: 'NotFound', message: /image layer sha256:nope is not unpacked/ });
    await snap.removeActive('ctr1');
    await snap.removeActive('ctr1');
    assert.equal(snap.activeDir('ctr1'), undefined);
    assert.equal(existsSync(info.dir), false);
  });

  it('collects what nothing stands on: a held chain keeps its parents, an active snapshot keeps its image layers', async () => {
    committed('sha256:a');
    committed('sha256:b', 'sha256:a');
    const lone = committed('sha256:lone');
    const held = new Set(['sha256:b']);
    const doomed = snap.collectRows((k) => held.has(k));
    assert.deepEqual(doomed, [join(snapshotsDir(), String(lone))]);
    await snap.removeDirs(doomed);
    assert.equal(existsSync(join(snapshotsDir(), String(lone))), false);
    await snap.prepareActive('ctr', 'sha256:b');
    assert.deepEqual(
      snap.collectRows(() => false),
      [],
      'an active snapshot keeps its chain',
    );
    await snap.removeActive('ctr');
    assert.equal(snap.collectRows(() => false).length, 2, 'then the chain goes, child first');
    assert.deepEqual(repo.all(), []);
  });

  it('extracts a layer and checks its diff ID; a mismatch leaves no snapshot', async () => {
    const raw = await layer();
    const blobPath = join(dir, 'layer.tar');
    writeFileSync(blobPath, raw);
    const diffId = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
    const req = { diffId, layer: `sha256:${'f'.repeat(64)}`, compression: 'none' as const, blobPath, maxBytes: 1 << 20 };
    const prepared = await snap.extract(req);
    assert.equal(readFileSync(join(prepared.dir, 'fs', 'etc', 'motd'), 'utf8'), 'hi\n');
    assert.equal(prepared.inodes, 2);
    await assert.rejects(snap.extract({ ...req, diffId: `sha256:${'0'.repeat(64)}` }), { kind: 'DataLoss', message: /unpacked content has diff ID sha256:/ });
    assert.deepEqual(readdirSync(snapshotsDir()), [String(prepared.id)]);
  });

  it('recovers: preparing rows and directories without a row go, committed snapshots stay', async () => {
    const a = committed('sha256:a');
    const half = repo.prepare();
    mkdirSync(join(snapshotsDir(), String(half), 'fs'), { recursive: true });
    mkdirSync(join(snapshotsDir(), '999', 'fs'), { recursive: true });
    await snap.recover();
    assert.deepEqual(readdirSync(snapshotsDir()), [String(a)]);
    assert.deepEqual(
      repo.all().map((r) => r.id),
      [a],
    );
  });
});
