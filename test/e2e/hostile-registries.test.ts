/**
 * Hostile registries end to end: a real berthd pulling through a fault-injecting proxy
 * (test/helpers/registry.ts) in front of a real docker-registry on 127.0.0.1, with
 * images built and pushed by the test.
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, statfsSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildBombLayer, buildImage, buildLayer, pushRandomImage, RegistryPusher, type PushedImage } from '../../hack/test-images/oci.js';
import { Berthd, until } from '../helpers/berthd.js';
import { grpcError } from '../helpers/cri-client.js';
import { startRegistry, startRegistryProxy, type Registry, type RegistryProxy } from '../helpers/registry.js';

describe('hostile registries', function () {
  this.timeout(120_000);
  let registry: Registry;
  /** One uncompressible 1 MiB layer. */
  let image: PushedImage;
  /** Two uncompressible layers of 700 KiB. */
  let twoLayers: PushedImage;
  /** 64 MiB of zeros in about 64 KB of gzip. */
  let bomb: { ref: string; id: string };
  const cleanup: Array<() => Promise<void> | void> = [];

  before(async function () {
    this.timeout(300_000);
    registry = await startRegistry();
    image = await pushRandomImage(registry.host, 'hostile/one-mib', 'latest', 1, 1 << 20, 'gzip');
    twoLayers = await pushRandomImage(registry.host, 'hostile/two-layers', 'latest', 2, 700 << 10, 'gzip');
    const built = buildImage({ layers: [buildBombLayer(64 << 20)], config: { Cmd: ['sh'] } });
    const pusher = new RegistryPusher(registry.host);
    try {
      await pusher.pushImage('hostile/bomb', built, ['latest']);
    } finally {
      pusher.close();
    }
    bomb = { ref: `${registry.host}/hostile/bomb:latest`, id: built.configBlob.digest };
  });
  after(async () => registry?.stop());
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  });

  async function start(config = ''): Promise<Berthd> {
    const b = await Berthd.start({ config });
    cleanup.push(() => b.dispose());
    return b;
  }
  async function proxy(opts: Parameters<typeof startRegistryProxy>[1] = {}): Promise<RegistryProxy> {
    const p = await startRegistryProxy(registry.host, opts);
    cleanup.push(() => p.stop());
    return p;
  }
  const via = (host: string, img: PushedImage): string => `${host}/${img.name}:${img.tag ?? 'latest'}`;
  const ingest = (b: Berthd): string[] => {
    const dir = join(b.root, 'content', 'ingest');
    return existsSync(dir) ? readdirSync(dir) : [];
  };
  const files = (dir: string): string[] => (existsSync(dir) ? (readdirSync(dir, { recursive: true }) as string[]) : []);
  /** No blob, snapshot, temp file or image row. */
  async function assertNothingLeft(b: Berthd): Promise<void> {
    assert.deepEqual(files(join(b.root, 'content', 'blobs', 'sha256')), [], 'blobs');
    assert.deepEqual(files(join(b.root, 'content', 'ingest')), [], 'ingest temp files');
    assert.deepEqual(files(join(b.root, 'snapshots')), [], 'snapshots');
    assert.deepEqual((await b.image.ListImages({})).images, []);
  }
  const layerGets = (p: RegistryProxy) => p.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${image.layers[0]!.digest}`));

  describe('redirects to special addresses', () => {
    it('a blob redirected to a link-local address: PERMISSION_DENIED before any connection, nothing left behind', async () => {
      // fe80::1 carries no zone, so even a connect would go nowhere (the kernel says EINVAL).
      const p = await proxy({ faults: [{ kind: 'redirect', toHost: '[fe80::1]:9', digest: image.layers[0]!.digest }] });
      const b = await start('[images]\npull_attempts = 1\n');
      const e = await grpcError(b.image.PullImage({ image: { image: via(p.host, image) } }));
      assert.equal(e.code, status.PERMISSION_DENIED, e.details);
      assert.match(
        e.details,
        new RegExp(`refusing to connect to fe80::1, a link-local address, for registry ${p.host.replace(/\./g, '\\.')}, which is not on one`),
      );
      // Once by the unpack worker (which follows no redirect and hands the blob back to the main
      // thread), once by the main thread, whose redirect is refused; a refusal is not retried.
      assert.equal(layerGets(p).length, 2, "the worker's GET and the main thread's; the refusal is not retried");
      await assertNothingLeft(b);
    });

    it('a loopback registry may send its blobs to loopback storage named by a name (localhost)', async () => {
      const p = await proxy({ faults: [{ kind: 'redirect', crossOrigin: true, digest: image.layers[0]!.digest }] });
      const port = p.redirectHost.split(':')[1]!;
      const p2 = await proxy({ faults: [{ kind: 'redirect', toHost: `localhost:${port}`, digest: image.layers[0]!.digest }] });
      const b = await start();
      await b.image.PullImage({ image: { image: via(p2.host, image) } });
      // The blob was served by the first proxy's storage port, reached through the name.
      assert.equal(p.redirected().length, 1);
      assert.equal(p.redirected()[0]!.server, 'redirect');
    });
  });

  describe('a trickling registry', () => {
    it('loses its download within a second once the only caller has gone', async () => {
      // 80 KB/s: above the floor rate, so only the caller's departure can end it.
      const p = await proxy({ faults: [{ kind: 'trickle', bytesPerTick: 4096, tickMs: 50, digest: image.layers[0]!.digest }] });
      const b = await start('[images]\npull_attempts = 1\n');
      const deadline = Date.now() + 1500;
      const e = await grpcError(b.image.PullImage({ image: { image: via(p.host, image) } }, { deadline }));
      assert.equal(e.code, status.DEADLINE_EXCEEDED, e.details);
      const get = await until(async () => (layerGets(p)[0]?.closedAt !== undefined ? layerGets(p)[0] : undefined), 10_000);
      assert.ok(get.closedAt! - deadline < 1000, `the transfer stopped ${get.closedAt! - deadline} ms after the caller left`);
      await until(async () => (ingest(b).length === 0 ? true : undefined), 5000);
      assert.deepEqual((await b.image.ListImages({})).images, []);
      // A retry starts afresh rather than inheriting the abort.
      p.faults = [];
      assert.equal((await b.image.PullImage({ image: { image: via(p.host, image) } })).image_ref, image.id);
    });

    it('keeps a shared download going while another pull still waits for it', async () => {
      // 320 KB/s: the 1 MiB layer takes about 3 s.
      const p = await proxy({ faults: [{ kind: 'trickle', bytesPerTick: 16384, tickMs: 50, digest: image.layers[0]!.digest }] });
      const b = await start('[images]\npull_attempts = 1\n');
      const ref = via(p.host, image);
      const patient = b.image.PullImage({ image: { image: ref } });
      const hasty = grpcError(b.image.PullImage({ image: { image: ref } }, { deadline: Date.now() + 1000 }));
      assert.equal((await hasty).code, status.DEADLINE_EXCEEDED);
      assert.equal((await patient).image_ref, image.id);
      assert.equal(layerGets(p).length, 1, 'one download, shared');
      assert.equal(layerGets(p)[0]!.status, 200);
    });

    it('counts a transfer below the floor rate as stalled', async () => {
      // 1 KB/s, well below a floor of 10 KiB/s measured over 1 s windows.
      const p = await proxy({ faults: [{ kind: 'trickle', bytesPerTick: 100, tickMs: 100, digest: image.layers[0]!.digest }] });
      const b = await start('[images]\npull_attempts = 1\nstall_timeout_seconds = 1\nmin_transfer_rate_bytes_per_second = 10240\n');
      const t0 = Date.now();
      const e = await grpcError(b.image.PullImage({ image: { image: via(p.host, image) } }));
      assert.equal(e.code, status.UNAVAILABLE, e.details);
      assert.match(e.details, /transfer slower than 10240 bytes\/s over 1 s \(\d+ bytes\), giving up on it/);
      assert.ok(e.details.includes(image.layers[0]!.digest), e.details);
      assert.ok(Date.now() - t0 < 10_000);
      await until(async () => (ingest(b).length === 0 ? true : undefined), 5000);
      assert.deepEqual((await b.image.ListImages({})).images, []);
    });
  });

  describe('decompression bombs', () => {
    it('caps the compression ratio past its threshold (RESOURCE_EXHAUSTED naming the limit), leaving nothing behind', async () => {
      const b = await start('[images]\nmax_compression_ratio = 100\ncompression_ratio_threshold_bytes = 1048576\n');
      const e = await grpcError(b.image.PullImage({ image: { image: bomb.ref } }));
      assert.equal(e.code, status.RESOURCE_EXHAUSTED, e.details);
      assert.match(e.details, /expands beyond \d+ bytes, a compression ratio of 100:1 over its \d+ compressed bytes \(images\.max_compression_ratio/);
      await assertNothingLeft(b);
      // The defaults (a 1 GiB threshold) let the same 64 MiB layer through.
      const ok = await start();
      assert.equal((await ok.image.PullImage({ image: { image: bomb.ref } })).image_ref, bomb.id);
    });

    it('caps the uncompressed bytes of a whole image, not just of each layer', async () => {
      const b = await start(`[images]\nmax_image_bytes = ${1 << 20}\n`);
      const e = await grpcError(b.image.PullImage({ image: { image: twoLayers.ref } }));
      assert.equal(e.code, status.RESOURCE_EXHAUSTED, e.details);
      assert.match(e.details, /images\.max_image_bytes \(1048576 bytes uncompressed per image/);
      await assertNothingLeft(b);
    });

    it('keeps a free-space reserve on the image filesystem', async () => {
      const b = await start(`[images]\nmin_free_percent = 100\nmin_free_bytes = ${Number.MAX_SAFE_INTEGER}\n`);
      const e = await grpcError(b.image.PullImage({ image: { image: image.ref } }));
      assert.equal(e.code, status.RESOURCE_EXHAUSTED, e.details);
      assert.match(e.details, /downloading \d+ bytes would leave \d+ bytes free on the image filesystem, less than the free-space reserve of \d+ bytes/);
      assert.match(e.details, /images\.min_free_bytes.*images\.min_free_percent = 100%/);
      await assertNothingLeft(b);
    });
  });

  describe('inodes', () => {
    it('keeps a free-inode reserve on the image filesystem', async function () {
      const b = await start(`[images]\nmin_free_inodes_percent = 100\nmin_free_inodes = ${Number.MAX_SAFE_INTEGER}\n`);
      const fsStat = statfsSync(b.root);
      if (fsStat.files === 0) this.skip(); // no inode limit there (btrfs): no reserve to keep
      const e = await grpcError(b.image.PullImage({ image: { image: image.ref } }));
      assert.equal(e.code, status.RESOURCE_EXHAUSTED, e.details);
      assert.match(
        e.details,
        new RegExp(
          `the image filesystem has \\d+ free inodes left for unpacking, less than the free-inode reserve of ${fsStat.files} \\(the smaller of images\\.min_free_inodes`,
        ),
      );
      await assertNothingLeft(b);
    });
  });

  describe('sparse layers', () => {
    it('pulls a layer holding a 2 GiB sparse file of a few KB of data: 2 GiB in size, KBs on disk', async () => {
      const REAL = 2 * 1024 ** 3;
      const tmp = mkdtempSync(join(tmpdir(), 'berth-sparse-'));
      let raw: Buffer;
      try {
        const fd = openSync(join(tmp, 'prealloc.db'), 'w');
        ftruncateSync(fd, REAL);
        writeSync(fd, Buffer.from('page zero'), 0, 9, 0);
        writeSync(fd, Buffer.alloc(4000, 'q'), 0, 4000, 1024 ** 3);
        closeSync(fd);
        raw = execFileSync('tar', ['-c', '--sparse', '--format=posix', '--sparse-version=1.0', '-C', tmp, 'prealloc.db'], { maxBuffer: 64 << 20 });
      } finally {
        rmSync(tmp, { recursive: true, force: true });
      }
      const built = buildImage({ layers: [await buildLayer(raw, 'gzip')], config: { Cmd: ['sh'] } });
      const pusher = new RegistryPusher(registry.host);
      try {
        await pusher.pushImage('hostile/sparse', built, ['latest']);
      } finally {
        pusher.close();
      }
      assert.ok(built.layers[0]!.size < 64 * 1024, `the layer blob is ${built.layers[0]!.size} bytes`);
      const b = await start();
      assert.equal((await b.image.PullImage({ image: { image: `${registry.host}/hostile/sparse:latest` } })).image_ref, built.configBlob.digest);
      const [snap] = readdirSync(join(b.root, 'snapshots')).filter((d) => existsSync(join(b.root, 'snapshots', d, 'fs', 'prealloc.db')));
      assert.ok(snap, 'the snapshot holds the file under its real name');
      const file = join(b.root, 'snapshots', snap, 'fs', 'prealloc.db');
      const st = statSync(file);
      assert.equal(st.size, REAL);
      assert.ok(st.blocks * 512 < 1024 * 1024, `${st.blocks * 512} bytes on disk`);
      const got = Buffer.alloc(4000);
      const fd = openSync(file, 'r');
      try {
        readSync(fd, got, 0, 4000, 1024 ** 3);
      } finally {
        closeSync(fd);
      }
      assert.deepEqual(got, Buffer.alloc(4000, 'q'));
      const fs = (await b.image.ImageFsInfo({})).image_filesystems[0]!;
      assert.ok(Number(fs.used_bytes!.value) < 1024 * 1024, `ImageFsInfo counts the data, not the holes: ${fs.used_bytes!.value}`);
    });
  });
});
