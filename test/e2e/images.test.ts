/**
 * ImageService end to end: a real berthd pulling from a real docker-registry on
 * 127.0.0.1 (and a fault-injecting, token-issuing proxy in front of it), images built
 * offline by hack/test-images. Each test runs its own berthd; the registry and its
 * fixtures are shared by the file.
 */
import { status } from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LAYERED_EXPECT, pushFixtures, pushRandomImage, type Fixtures, type PushedImage } from '../../hack/test-images/oci.js';
import { Berthd, until } from '../helpers/berthd.js';
import { grpcError } from '../helpers/cri-client.js';
import { freePort, startRegistry, startRegistryProxy, type Registry, type RegistryProxy } from '../helpers/registry.js';

/** The process's threads and its largest mappings by RSS, for a message about its memory. */
function largestRegions(pid: number): string {
  const threads = /Threads:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  const regions: Array<{ what: string; kb: number }> = [];
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    if (/^[0-9a-f]+-/.test(line)) regions.push({ what: line.replace(/\s+/g, ' '), kb: 0 });
    else if (line.startsWith('Rss:') && regions.length) regions[regions.length - 1]!.kb = Number(line.split(/\s+/)[1]);
  }
  regions.sort((x, y) => y.kb - x.kb);
  return `${threads} threads; largest: ${regions
    .slice(0, 6)
    .map((r) => `${r.kb} kB ${r.what}`)
    .join(' | ')}`;
}

describe('ImageService', function () {
  this.timeout(120_000);
  let registry: Registry;
  let authRegistry: Registry;
  let fx: Fixtures;
  const cleanup: Array<() => Promise<void> | void> = [];

  before(async function () {
    this.timeout(300_000);
    registry = await startRegistry();
    fx = await pushFixtures(registry.host);
    authRegistry = await startRegistry({ htpasswd: { user: 'alice', password: 's3cret-pw' } });
    await pushFixtures(authRegistry.host, { auth: { user: 'alice', password: 's3cret-pw' } });
  });
  after(async () => {
    await registry?.stop();
    await authRegistry?.stop();
  });
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
  /** The same image reference, served by another host (a proxy). */
  const via = (host: string, img: PushedImage, tag = img.tag ?? 'latest') => `${host}/${img.name}:${tag}`;

  function files(dir: string): string[] {
    return existsSync(dir) ? (readdirSync(dir, { recursive: true }) as string[]) : [];
  }
  /** Asserts image storage holds nothing: no blob, snapshot, temp file or accounted byte. */
  async function assertStoreEmpty(b: Berthd): Promise<void> {
    assert.deepEqual(files(join(b.root, 'content', 'blobs', 'sha256')), [], 'blobs');
    assert.deepEqual(files(join(b.root, 'content', 'ingest')), [], 'ingest temp files');
    assert.deepEqual(files(join(b.root, 'snapshots')), [], 'snapshots');
    const fs = (await b.image.ImageFsInfo({})).image_filesystems[0]!;
    assert.equal(fs.used_bytes!.value, '0');
    assert.equal(fs.inodes_used!.value, '0');
    assert.deepEqual((await b.image.ListImages({})).images, []);
  }

  it('pulls by tag: ID, tags, digests, size and user are exact', async () => {
    const b = await start();
    const img = fx.busybox;
    const { image_ref } = await b.image.PullImage({ image: { image: img.ref } });
    assert.equal(image_ref, img.id);
    const st = await b.image.ImageStatus({ image: { image: img.ref }, verbose: true });
    assert.equal(st.image!.id, img.id);
    assert.deepEqual(st.image!.repo_tags, [img.ref]);
    assert.deepEqual(st.image!.repo_digests, [img.digestRef]);
    assert.equal(Number(st.image!.size), img.manifestSize + img.configSize + img.layersSize);
    assert.equal(st.image!.uid, null);
    assert.equal(st.image!.username, '');
    assert.equal(st.image!.spec!.image, img.id);
    const info = JSON.parse(st.info.info!);
    assert.equal(info.manifestDigest, img.digest);
    assert.deepEqual(info.config.run.cmd, ['sh']);
    assert.deepEqual(
      info.layers.map((l: { chainId: string }) => l.chainId),
      img.chainIds,
    );
    // Found by ID, short ID, "sha256:"-less ID and digest reference too.
    for (const name of [img.id, img.id.slice(7), img.id.slice(7, 20), img.digestRef]) {
      assert.equal((await b.image.ImageStatus({ image: { image: name } })).image?.id, img.id, name);
    }
    const list = await b.image.ListImages({});
    assert.deepEqual(
      list.images.map((i) => i.id),
      [img.id],
    );
    const fsInfo = (await b.image.ImageFsInfo({})).image_filesystems[0]!;
    assert.ok(Number(fsInfo.used_bytes!.value) > img.layers[0]!.uncompressedSize / 2);
    assert.ok(Number(fsInfo.inodes_used!.value) > 10);
    assert.equal(fsInfo.fs_id!.mountpoint, join(b.root, 'snapshots'));
  });

  it('pulls by digest (no tag), then the tag attaches to the same image', async () => {
    const b = await start();
    const img = fx.busybox;
    assert.equal((await b.image.PullImage({ image: { image: img.digestRef } })).image_ref, img.id);
    let st = await b.image.ImageStatus({ image: { image: img.digestRef } });
    assert.deepEqual(st.image!.repo_tags, []);
    assert.deepEqual(st.image!.repo_digests, [img.digestRef]);
    await b.image.PullImage({ image: { image: img.ref } });
    await b.image.PullImage({ image: { image: fx.busybox135.ref } });
    st = await b.image.ImageStatus({ image: { image: img.id } });
    assert.deepEqual(st.image!.repo_tags, [fx.busybox135.ref, img.ref].sort());
    assert.equal((await b.image.ListImages({})).images.length, 1);
  });

  it('unpacks every kind of entry, and the layers stack to the right tree under a real overlay mount', async () => {
    const b = await start();
    const img = fx.layered;
    await b.image.PullImage({ image: { image: img.ref } });
    const st = await b.image.ImageStatus({ image: { image: img.ref }, verbose: true });
    assert.equal(st.image!.uid!.value, '1000');
    const layers = JSON.parse(st.info.info!).layers as Array<{ chainId: string }>;
    assert.equal(layers.length, img.layers.length);
    assert.deepEqual(new Set(img.layers.map((l) => l.compression)), new Set(['gzip', 'zstd', 'none']));
    // Mount the chain read-only as a container would see it: top layer first.
    assert.equal(readdirSync(join(b.root, 'snapshots')).length, img.layers.length);
    const db = new Database(join(b.root, 'berth.db'), { readonly: true });
    const ids = [...img.chainIds].reverse().map((c) => (db.prepare('SELECT id FROM snapshots WHERE key = ?').get(c) as { id: number }).id);
    db.close();
    const lower = ids.map((id) => join(b.root, 'snapshots', String(id), 'fs')).join(':');
    const mnt = mkdtempSync(join(tmpdir(), 'berth-merged-'));
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${lower}`, mnt]);
    try {
      for (const e of LAYERED_EXPECT.present) {
        const p = join(mnt, e.path);
        const s = lstatSync(p);
        const kind = s.isFile()
          ? 'file'
          : s.isDirectory()
            ? 'directory'
            : s.isSymbolicLink()
              ? 'symlink'
              : s.isCharacterDevice()
                ? 'character-device'
                : s.isFIFO()
                  ? 'fifo'
                  : '?';
        assert.equal(kind, e.type, e.path);
        if (e.mode !== undefined) assert.equal(s.mode & 0o7777, e.mode, `${e.path} mode ${(s.mode & 0o7777).toString(8)}`);
        if (e.uid !== undefined) assert.equal(s.uid, e.uid, `${e.path} uid`);
        if (e.gid !== undefined) assert.equal(s.gid, e.gid, `${e.path} gid`);
        if (e.mtime !== undefined) assert.equal(Math.floor(s.mtimeMs / 1000), Math.floor(e.mtime.getTime() / 1000), `${e.path} mtime`);
        if (e.content !== undefined) assert.equal(readFileSync(p, 'utf8'), e.content, `${e.path} content`);
        if (e.linkname !== undefined) assert.equal(readlinkSync(p), e.linkname, `${e.path} target`);
        if (e.hardlinkOf !== undefined) assert.equal(s.ino, statSync(join(mnt, e.hardlinkOf)).ino, `${e.path} hardlink`);
        if (e.devmajor !== undefined) assert.equal(s.rdev, (e.devmajor << 8) | e.devminor!, `${e.path} rdev`);
        for (const [k, v] of Object.entries(e.xattrs ?? {})) {
          assert.equal(execFileSync('getfattr', ['--only-values', '-n', k, p], { encoding: 'utf8' }), v, `${e.path} xattr ${k}`);
        }
      }
      for (const gone of LAYERED_EXPECT.absent) assert.ok(!existsSync(join(mnt, gone)), `${gone} must be whited out`);
    } finally {
      execFileSync('umount', [mnt]);
      rmSync(mnt, { recursive: true, force: true });
    }
  });

  it('reports the image user by name or uid', async () => {
    const b = await start();
    await b.image.PullImage({ image: { image: fx.user.ref } });
    const st = await b.image.ImageStatus({ image: { image: fx.user.ref } });
    assert.equal(st.image!.username, 'berth');
    assert.equal(st.image!.uid, null);
  });

  it('picks this node’s platform from an OCI index and a Docker manifest list', async () => {
    const b = await start();
    for (const idx of [fx.multiarch, fx.multiarchDocker]) {
      const { image_ref } = await b.image.PullImage({ image: { image: idx.ref } });
      assert.equal(image_ref, idx.host.id, idx.ref);
      assert.notEqual(image_ref, idx.windows.id);
      const st = await b.image.ImageStatus({ image: { image: idx.ref } });
      assert.ok(st.image!.repo_digests.includes(idx.digestRef), 'the repo digest is the index digest, as kubelet records it');
    }
    assert.equal((await b.image.PullImage({ image: { image: fx.busyboxDocker.ref } })).image_ref, fx.busyboxDocker.id);
  });

  it('RemoveImage by tag removes every name, collects blobs and snapshots, and is idempotent', async () => {
    const b = await start();
    await b.image.PullImage({ image: { image: fx.busybox.ref } });
    await b.image.PullImage({ image: { image: fx.busybox135.ref } });
    await b.image.PullImage({ image: { image: fx.layered.ref } });
    await b.image.RemoveImage({ image: { image: fx.busybox135.ref } });
    assert.equal((await b.image.ImageStatus({ image: { image: fx.busybox.ref } })).image, null, 'every tag went with the image');
    assert.deepEqual(
      (await b.image.ListImages({})).images.map((i) => i.id),
      [fx.layered.id],
    );
    // The layered image shares busybox's bottom layer: that snapshot and blob must stay.
    assert.equal(readdirSync(join(b.root, 'snapshots')).length, fx.layered.layers.length);
    await b.image.RemoveImage({ image: { image: fx.busybox.ref } });
    await b.image.RemoveImage({ image: { image: fx.layered.id } });
    await b.image.RemoveImage({ image: { image: fx.layered.id } });
    await assertStoreEmpty(b);
    await b.image.PullImage({ image: { image: fx.busybox.digestRef } });
    await b.image.RemoveImage({ image: { image: fx.busybox.digestRef } });
    await assertStoreEmpty(b);
  });

  it('ImageStatus of an unknown image is empty; ListImages filters; missing fields are INVALID_ARGUMENT', async () => {
    const b = await start();
    await b.image.PullImage({ image: { image: fx.busybox.ref } });
    await b.image.PullImage({ image: { image: fx.user.ref } });
    assert.deepEqual(await b.image.ImageStatus({ image: { image: `${registry.host}/nope:1` } }), { image: null, info: {} });
    assert.deepEqual(
      (await b.image.ListImages({ filter: { image: { image: fx.user.ref } } })).images.map((i) => i.id),
      [fx.user.id],
    );
    assert.deepEqual((await b.image.ListImages({ filter: { image: { image: 'sha256:' + 'f'.repeat(64) } } })).images, []);
    // A repository without a tag lists every image of that repository.
    assert.deepEqual(
      (await b.image.ListImages({ filter: { image: { image: fx.busybox.repo } } })).images.map((i) => i.id),
      [fx.busybox.id],
    );
    const streamed: string[] = [];
    await new Promise<void>((resolve, reject) => {
      const s = b.image.raw.StreamImages({});
      s.on('data', (m: { images: Array<{ id: string }> }) => streamed.push(...m.images.map((i) => i.id)));
      s.on('end', resolve);
      s.on('error', reject);
    });
    assert.deepEqual(streamed.sort(), [fx.busybox.id, fx.user.id].sort());
    for (const call of [b.image.ImageStatus({}), b.image.PullImage({}), b.image.RemoveImage({ image: { image: '' } })]) {
      const e = await grpcError(call);
      assert.equal(e.code, status.INVALID_ARGUMENT);
      assert.match(e.details, /^image\.image is required$/);
    }
  });

  it('refuses malformed references, and reports unknown repositories and tags as NOT_FOUND', async () => {
    const b = await start();
    for (const bad of ['UPPER/Case', 'busybox:tag with space', `${registry.host}/x@sha256:1234`]) {
      const e = await grpcError(b.image.PullImage({ image: { image: bad } }));
      assert.equal(e.code, status.INVALID_ARGUMENT, bad);
      assert.match(e.details, /invalid image reference/);
    }
    const repo = await grpcError(b.image.PullImage({ image: { image: `${registry.host}/berth-test/nonexistent:latest` } }));
    assert.equal(repo.code, status.NOT_FOUND);
    assert.match(repo.details, /not found in registry 127\.0\.0\.1:\d+ \((NAME_UNKNOWN|MANIFEST_UNKNOWN)/);
    const tag = await grpcError(b.image.PullImage({ image: { image: `${registry.host}/berth-test/busybox:no-such-tag` } }));
    assert.equal(tag.code, status.NOT_FOUND);
    assert.match(tag.details, /MANIFEST_UNKNOWN/);
    await assertStoreEmpty(b);
  });

  it('answers UNAVAILABLE for an unreachable registry, after its retries, in bounded time', async () => {
    const b = await start('[images]\npull_attempts = 3\n');
    const port = await freePort();
    const t0 = Date.now();
    const e = await grpcError(b.image.PullImage({ image: { image: `127.0.0.1:${port}/berth-test/busybox:latest` } }));
    assert.equal(e.code, status.UNAVAILABLE);
    assert.match(e.details, new RegExp(`registry 127\\.0\\.0\\.1:${port} unreachable after 3 attempts: .*ECONNREFUSED`));
    assert.ok(Date.now() - t0 < 10_000);
  });

  it('basic auth: refuses without or with wrong credentials; pulls with them from the request or the config', async () => {
    const ref = `${authRegistry.host}/${fx.busybox.name}:latest`;
    const b = await start();
    const none = await grpcError(b.image.PullImage({ image: { image: ref } }));
    assert.equal(none.code, status.UNAUTHENTICATED);
    assert.match(none.details, /requires a username and password/);
    const wrong = await grpcError(b.image.PullImage({ image: { image: ref }, auth: { username: 'alice', password: 'wrong-pw' } }));
    assert.equal(wrong.code, status.UNAUTHENTICATED);
    assert.match(wrong.details, /refused the credentials/);
    assert.equal((await b.image.PullImage({ image: { image: ref }, auth: { username: 'alice', password: 's3cret-pw' } })).image_ref, fx.busybox.id);
    await b.image.RemoveImage({ image: { image: ref } });
    const encoded = Buffer.from('alice:s3cret-pw').toString('base64');
    assert.equal((await b.image.PullImage({ image: { image: ref }, auth: { auth: encoded } })).image_ref, fx.busybox.id);
    assert.ok(!b.logs().includes('s3cret-pw') && !b.logs().includes(encoded), 'credentials never reach the log');

    const c = await start(`[registries."${authRegistry.host}"]\nusername = "alice"\npassword = "s3cret-pw"\n`);
    assert.equal((await c.image.PullImage({ image: { image: ref } })).image_ref, fx.busybox.id);
    const st = await c.runtime.Status({ verbose: true });
    assert.ok(!st.info.config!.includes('s3cret-pw'), 'Status does not reveal configured passwords');
  });

  it('TLS: refuses an untrusted certificate, accepts it only with insecure_skip_verify', async () => {
    const tlsRegistry = await startRegistry({ tls: true });
    cleanup.push(() => tlsRegistry.stop());
    await pushFixtures(tlsRegistry.host, { tls: true });
    const ref = `${tlsRegistry.host}/${fx.busybox.name}:latest`;
    const strict = await start(`[images]\npull_attempts = 1\n[registries."${tlsRegistry.host}"]\nplain_http = false\n`);
    const e = await grpcError(strict.image.PullImage({ image: { image: ref } }));
    assert.equal(e.code, status.UNAVAILABLE);
    assert.match(e.details, /self[- ]signed certificate|certificate/i);
    const insecure = await start(`[registries."${tlsRegistry.host}"]\nplain_http = false\ninsecure_skip_verify = true\n`);
    assert.equal((await insecure.image.PullImage({ image: { image: ref } })).image_ref, fx.busybox.id);
  });

  it('reports images listed in images.pinned as pinned', async () => {
    const b = await start(`[images]\npinned = ["${fx.user.ref}"]\n`);
    await b.image.PullImage({ image: { image: fx.user.ref } });
    await b.image.PullImage({ image: { image: fx.busybox.ref } });
    const byId = new Map((await b.image.ListImages({})).images.map((i) => [i.id, i.pinned]));
    assert.equal(byId.get(fx.user.id), true);
    assert.equal(byId.get(fx.busybox.id), false);
    assert.equal((await b.image.ImageStatus({ image: { image: fx.user.id } })).image!.pinned, true);
  });

  it('bearer tokens: fetched from the realm with the credentials, cached, and refused when wrong', async () => {
    const p = await proxy({ bearer: { user: 'bob', password: 'tok-pw' } });
    const b = await start();
    const e = await grpcError(b.image.PullImage({ image: { image: via(p.host, fx.busybox) }, auth: { username: 'bob', password: 'nope' } }));
    assert.equal(e.code, status.UNAUTHENTICATED);
    assert.match(e.details, /token service of registry .* refused the credentials/);
    await b.image.PullImage({ image: { image: via(p.host, fx.busybox) }, auth: { username: 'bob', password: 'tok-pw' } });
    assert.equal(p.tokens.filter((t) => t.user === 'bob').length, 1, 'one token served the whole pull');
    assert.ok(p.tokens[0]!.scopes.includes(`repository:${fx.busybox.name}:pull`));
  });

  it('mirrors: served by a mirror; falls back to the registry when the mirror is down', async () => {
    const dead = await freePort();
    const b = await start(
      `[registries."127.0.0.1:${dead}"]\nmirrors = ["${registry.url}"]\n` + `[registries."${registry.host}"]\nmirrors = ["http://127.0.0.1:${dead}"]\n`,
    );
    // The image's own registry is down; the mirror has it.
    assert.equal((await b.image.PullImage({ image: { image: `127.0.0.1:${dead}/${fx.busybox.name}:latest` } })).image_ref, fx.busybox.id);
    // The mirror is down; the registry itself answers.
    assert.equal((await b.image.PullImage({ image: { image: fx.user.ref } })).image_ref, fx.user.id);
    assert.ok(b.records().some((r) => r.msg === 'mirror failed, trying the next endpoint'));
  });

  it('retries 5xx answers and follows a cross-origin redirect without the credentials', async () => {
    const layer = fx.busybox.layers[0]!.digest;
    const p = await proxy({
      bearer: { anonymous: true },
      faults: [
        { kind: 'fail', times: 2, status: 503, digest: fx.busybox.configDigest },
        { kind: 'redirect', crossOrigin: true, digest: layer },
      ],
    });
    const b = await start();
    assert.equal((await b.image.PullImage({ image: { image: via(p.host, fx.busybox) } })).image_ref, fx.busybox.id);
    const redirected = p.redirected();
    assert.equal(redirected.length, 1);
    assert.equal(redirected[0]!.server, 'redirect');
    assert.equal(redirected[0]!.headers.authorization, undefined, 'blob storage never sees the registry token');
    assert.ok(p.requests.some((r) => r.path.includes(layer) && r.headers.authorization?.startsWith('Bearer ')));
  });

  for (const [name, fault, code, msg] of [
    ['a corrupted layer', (_size: number) => ({ kind: 'corrupt' }) as const, status.DATA_LOSS, /content has digest sha256:/],
    [
      'a truncated layer',
      (size: number) => ({ kind: 'truncate', afterBytes: Math.floor(size / 2) }) as const,
      status.DATA_LOSS,
      /truncated: connection closed after \d+ of \d+ bytes/,
    ],
    [
      'a short Content-Length',
      (size: number) => ({ kind: 'wrong-length', contentLength: size - 7 }) as const,
      status.DATA_LOSS,
      /announced \d+ bytes, the descriptor says \d+/,
    ],
  ] as const) {
    it(`fails on ${name}, naming the layer, and leaves nothing behind`, async () => {
      // The biggest layer, so a cut lands in the middle of real data.
      const big = [...fx.layered.layers].sort((x, y) => y.size - x.size)[0]!;
      const layer = big.digest;
      const p = await proxy({ faults: [{ ...fault(big.size), digest: layer }] });
      const b = await start('[images]\npull_attempts = 1\n');
      const e = await grpcError(b.image.PullImage({ image: { image: via(p.host, fx.layered) } }));
      assert.equal(e.code, code, e.details);
      assert.ok(e.details.includes(layer), `the message names the layer: ${e.details}`);
      assert.match(e.details, msg);
      await assertStoreEmpty(b);
    });
  }

  it('gives up on a stalled transfer after the stall timeout', async () => {
    const p = await proxy({ faults: [{ kind: 'stall', afterBytes: 10, digest: fx.busybox.layers[0]!.digest }] });
    const b = await start('[images]\npull_attempts = 1\nstall_timeout_seconds = 1\n');
    const t0 = Date.now();
    const e = await grpcError(b.image.PullImage({ image: { image: via(p.host, fx.busybox) } }));
    assert.equal(e.code, status.UNAVAILABLE, e.details);
    assert.match(e.details, /no data for 1 s, giving up on the transfer \(after 10 of \d+ bytes\)/);
    assert.ok(Date.now() - t0 < 10_000);
    await assertStoreEmpty(b);
  });

  it('refuses schema1 and unknown manifest types with a clear message', async () => {
    const p = await proxy({
      manifests: [
        {
          name: 'berth-test/old',
          reference: 'v1',
          contentType: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
          body: JSON.stringify({ schemaVersion: 1, name: 'berth-test/old', tag: 'v1', fsLayers: [] }),
        },
        { name: 'berth-test/odd', reference: 'v1', contentType: 'application/vnd.example.odd+json', body: '{}' },
      ],
    });
    const b = await start();
    const old = await grpcError(b.image.PullImage({ image: { image: `${p.host}/berth-test/old:v1` } }));
    assert.equal(old.code, status.FAILED_PRECONDITION);
    assert.match(old.details, /Docker schema1 manifest, which berth does not support/);
    const odd = await grpcError(b.image.PullImage({ image: { image: `${p.host}/berth-test/odd:v1` } }));
    assert.equal(odd.code, status.FAILED_PRECONDITION);
    assert.match(odd.details, /unsupported media type "application\/vnd.example.odd\+json"/);
    await assertStoreEmpty(b);
  });

  for (const kind of ['dotdot', 'absolute', 'symlinkParent', 'hardlink'] as const) {
    it(`refuses a layer that would escape its snapshot (${kind}) and leaves nothing behind`, async () => {
      const evil = fx.evil[kind];
      const b = await start();
      const e = await grpcError(b.image.PullImage({ image: { image: evil.ref } }));
      assert.equal(e.code, status.FAILED_PRECONDITION, e.details);
      const layer = evil.layers[evil.layers.length - 1]!.digest;
      assert.ok(e.details.startsWith(`layer ${layer}: `), e.details);
      if (evil.escapePath) assert.ok(!existsSync(evil.escapePath), `${evil.escapePath} was written`);
      assert.ok(!existsSync(join(b.root, evil.escapeName)) && !existsSync(join(b.dir, evil.escapeName)) && !existsSync(join('/', evil.escapeName)));
      await assertStoreEmpty(b);
    });
  }

  it('refuses a layer that expands beyond images.max_layer_bytes', async () => {
    const b = await start(`[images]\nmax_layer_bytes = ${64 * 1024 * 1024}\n`);
    const e = await grpcError(b.image.PullImage({ image: { image: fx.evil.bomb.ref } }));
    assert.equal(e.code, status.RESOURCE_EXHAUSTED, e.details);
    assert.match(e.details, /expands beyond the configured limit of 67108864 bytes/);
    await assertStoreEmpty(b);
  });

  it('caps manifest sizes and index nesting, as configured', async () => {
    const host = fx.multiarch.host;
    // An index whose only entry is another index: two levels of nesting.
    const nested = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', digest: fx.multiarch.digest, size: 0, platform: host.platform }],
    });
    const huge = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [],
      annotations: { pad: 'x'.repeat(5000) },
    });
    const p = await proxy({
      manifests: [
        { name: fx.multiarch.name, reference: 'nested', contentType: 'application/vnd.oci.image.index.v1+json', body: nested },
        { name: fx.multiarch.name, reference: 'huge', contentType: 'application/vnd.oci.image.index.v1+json', body: huge },
      ],
    });
    const b = await start('[images]\nmax_index_depth = 1\nmax_manifest_bytes = 4096\n');
    const deep = await grpcError(b.image.PullImage({ image: { image: `${p.host}/${fx.multiarch.name}:nested` } }));
    assert.equal(deep.code, status.FAILED_PRECONDITION, deep.details);
    assert.match(deep.details, /indexes nest deeper than 1 levels \(images.max_index_depth\)/);
    const big = await grpcError(b.image.PullImage({ image: { image: `${p.host}/${fx.multiarch.name}:huge` } }));
    assert.equal(big.code, status.RESOURCE_EXHAUSTED, big.details);
    assert.match(big.details, /\d+ bytes is more than the limit of 4096/);
    await assertStoreEmpty(b);
  });

  it('a pull cut off by its deadline answers DEADLINE_EXCEEDED; the transfer nobody waits for is let go', async () => {
    const stalled = fx.layered.layers[1]!.digest;
    const p = await proxy({ faults: [{ kind: 'stall', afterBytes: 10, digest: stalled }] });
    const b = await start('[images]\npull_attempts = 1\nstall_timeout_seconds = 2\n');
    const e = await grpcError(b.image.PullImage({ image: { image: via(p.host, fx.layered) } }, { deadline: Date.now() + 1000 }));
    assert.equal(e.code, status.DEADLINE_EXCEEDED);
    assert.deepEqual((await b.image.ListImages({})).images, []);
    // The download is shared work: it stops once no pull waits for it, and leaves no temp file.
    await until(async () => (files(join(b.root, 'content', 'ingest')).length === 0 ? true : undefined), 8000, 100);
    p.faults = [];
    // The layer's shared task may still be winding down (on a loaded machine, just after
    // the temp file went): a pull that joins it gets its stall; the next one starts afresh.
    const again = (): Promise<{ image_ref: string }> => b.image.PullImage({ image: { image: via(p.host, fx.layered) } });
    const ref = await again().catch(async (err: { details?: string }) => {
      assert.match(err.details ?? '', /no data for 2 s/);
      return again();
    });
    assert.equal(ref.image_ref, fx.layered.id);
  });

  it('two concurrent pulls of one image download each blob once', async () => {
    const p = await proxy();
    const b = await start();
    const ref = via(p.host, fx.layered);
    const [x, y] = await Promise.all([b.image.PullImage({ image: { image: ref } }), b.image.PullImage({ image: { image: ref } })]);
    assert.equal(x.image_ref, fx.layered.id);
    assert.equal(y.image_ref, fx.layered.id);
    for (const l of fx.layered.layers) {
      const gets = p.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${l.digest}`) && r.status === 200);
      assert.equal(gets.length, 1, `layer ${l.digest} fetched ${gets.length} times`);
    }
  });

  it('hands back the memory of cold pulls: RSS returns within 10 MiB of a fresh, idle berthd', async function () {
    // The property behind issue 14's "RSS 60 s after 3 cold pulls": the unpack workers'
    // heaps and the malloc arenas a pull fills must not stay in berthd's RSS.
    this.timeout(240_000);
    const img = await pushRandomImage(registry.host, 'test/rss', 'latest', 5, 16 << 20, 'gzip');
    const b = await start();
    const rss = (): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${b.proc.pid!}/status`, 'utf8'))![1]) / 1024;
    await new Promise((r) => setTimeout(r, 3000));
    const idle = rss();
    let peak = idle;
    for (let i = 0; i < 3; i++) {
      await b.image.PullImage({ image: { image: img.ref } });
      peak = Math.max(peak, rss());
      await b.image.RemoveImage({ image: { image: img.ref } });
    }
    assert.ok(peak > idle, `RSS did not move during the pulls (${idle.toFixed(1)} MiB)`);
    let now = peak;
    await until(async () => ((now = rss()) <= idle + 10 ? true : undefined), 60_000, 1000).catch(() => undefined);
    assert.ok(
      now <= idle + 10,
      `RSS ${now.toFixed(1)} MiB 60 s after three pulls, ${idle.toFixed(1)} MiB fresh and idle (peak ${peak.toFixed(1)}); ${largestRegions(b.proc.pid!)}`,
    );
  });

  it('after kill -9 during a pull: no half image, a clean store, and the retry reuses verified blobs', async () => {
    const stalled = fx.layered.layers[2]!.digest;
    const p = await proxy({ faults: [{ kind: 'stall', afterBytes: 10, digest: stalled }] });
    const b = await Berthd.start();
    const dir = b.dir;
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const pulling = grpcError(b.image.PullImage({ image: { image: via(p.host, fx.layered) } }));
    // Wait until the stalled blob is being fetched and the first layer is stored and recorded.
    await until(async () => (p.requests.some((r) => r.path.endsWith(stalled)) ? true : undefined));
    const first = fx.layered.layers[0]!.digest;
    await until(async () => {
      const db = new Database(join(b.root, 'berth.db'), { readonly: true, fileMustExist: true });
      try {
        return db.prepare('SELECT 1 FROM blobs WHERE digest = ?').get(first) ? true : undefined;
      } finally {
        db.close();
      }
    });
    await b.stop('SIGKILL');
    await pulling;
    p.faults = [];
    const before = p.requests.length;
    const again = await Berthd.start({ reuse: { dir } });
    cleanup.push(() => again.dispose({ keepDir: true }));
    assert.deepEqual((await again.image.ListImages({})).images, [], 'no half image is listed');
    assert.deepEqual(files(join(again.root, 'content', 'ingest')), [], 'temp files were removed');
    assert.equal((await again.image.PullImage({ image: { image: via(p.host, fx.layered) } })).image_ref, fx.layered.id);
    const refetched = p.requests.slice(before).filter((r) => r.method === 'GET' && r.path.includes('/blobs/') && r.status === 200);
    assert.ok(
      refetched.some((r) => r.path.endsWith(stalled)),
      'the interrupted blob is fetched',
    );
    assert.ok(!refetched.some((r) => r.path.endsWith(fx.layered.layers[0]!.digest)), 'the verified first layer is reused');
  });

  it('keeps images across a restart', async () => {
    const b = await Berthd.start();
    const dir = b.dir;
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: fx.busybox.ref } });
    assert.equal((await b.stop('SIGTERM')).code, 0);
    const again = await Berthd.start({ reuse: { dir } });
    cleanup.push(() => again.dispose({ keepDir: true }));
    assert.deepEqual(
      (await again.image.ListImages({})).images.map((i) => i.repo_tags),
      [[fx.busybox.ref]],
    );
  });
});
