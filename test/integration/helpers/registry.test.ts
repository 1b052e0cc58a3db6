/**
 * Tests of the image-test harness itself: the offline image builder, the real registry
 * it pushes to, and the fault/auth proxy. Everything is checked with plain HTTP, not
 * with berth, so a berth bug cannot hide a harness bug (or the other way round).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import http from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import {
  BOMB_BYTES,
  LAYERED_EXPECT,
  MediaTypes,
  hostPlatform,
  platformString,
  pushFixtures,
  pushRandomImage,
  schema1Manifest,
  sha256,
  type Fixtures,
  type PushedImage,
} from '../../../hack/test-images/oci.js';
import { startRegistry, startRegistryProxy, type Registry, type RegistryProxy } from '../../helpers/registry.js';

interface Got {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** False when the connection ended before Content-Length was reached. */
  complete: boolean;
}

const ACCEPT_ALL = [MediaTypes.ociIndex, MediaTypes.ociManifest, MediaTypes.dockerManifestList, MediaTypes.dockerManifest].join(', ');

/** A plain GET (or HEAD) that never throws on a cut connection, so fault tests can look at what arrived. */
function get(url: string, opts: { headers?: Record<string, string>; method?: string; idleMs?: number } = {}): Promise<Got> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      const done = (): void => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), complete: res.complete });
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', done);
      res.on('error', () => undefined);
      res.on('close', done);
      if (opts.idleMs) {
        res.setTimeout(opts.idleMs, () => {
          req.destroy();
        });
      }
    });
    req.on('error', reject);
    req.end();
  });
}

function basic(user: string, password: string): string {
  return 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64');
}

function hex(data: Buffer): string {
  return sha256(data);
}

interface TarItem {
  header: tar.Header & { pax?: Record<string, string> };
  data: Buffer;
}

async function untar(data: Buffer): Promise<TarItem[]> {
  const items: TarItem[] = [];
  const extract = tar.extract();
  const collected = (async () => {
    for await (const entry of extract) {
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      items.push({ header: entry.header as TarItem['header'], data: Buffer.concat(chunks) });
    }
  })();
  await pipeline(Readable.from([data]), extract);
  await collected;
  return items;
}

function decompress(data: Buffer, mediaType: string): Buffer {
  if (mediaType.endsWith('gzip')) return zlib.gunzipSync(data);
  if (mediaType.endsWith('zstd')) return execFileSync('zstd', ['-d', '-q', '-c'], { input: data, maxBuffer: 1 << 30 });
  return data;
}

describe('image test fixtures (hack/test-images/oci.ts, test/helpers/registry.ts)', function () {
  this.timeout(120_000);
  let registry: Registry;
  let fx: Fixtures;
  let pushMs: number;

  before(async () => {
    registry = await startRegistry();
    const t0 = Date.now();
    fx = await pushFixtures(registry.host);
    pushMs = Date.now() - t0;
    console.log(`      pushFixtures took ${pushMs} ms (first in this process, builds included)`);
  });

  after(async () => {
    await registry?.stop();
  });

  async function manifest(name: string, ref: string, accept = ACCEPT_ALL): Promise<Got> {
    return get(`${registry.url}/v2/${name}/manifests/${ref}`, { headers: { accept } });
  }

  async function blob(name: string, digest: string): Promise<Buffer> {
    const res = await get(`${registry.url}/v2/${name}/blobs/${digest}`);
    assert.equal(res.status, 200, `blob ${digest} of ${name}`);
    assert.equal(hex(res.body), digest);
    return res.body;
  }

  /** Fetches an image the way a puller would and checks every digest and diff ID. */
  async function checkImage(
    img: PushedImage,
    expectType: string,
  ): Promise<{ manifest: { layers: Array<{ mediaType: string; digest: string; size: number }>; config: { mediaType: string } }; layers: Buffer[] }> {
    const res = await manifest(img.name, img.tag ?? img.digest);
    assert.equal(res.status, 200);
    assert.equal(res.headers['content-type'], expectType);
    assert.equal(res.headers['docker-content-digest'], img.digest);
    assert.equal(hex(res.body), img.digest);
    assert.equal(res.body.length, img.manifestSize);
    const m = JSON.parse(res.body.toString()) as {
      mediaType: string;
      config: { mediaType: string; digest: string };
      layers: Array<{ mediaType: string; digest: string; size: number }>;
    };
    assert.equal(m.mediaType, expectType);
    assert.equal(m.config.digest, img.id);
    const config = JSON.parse((await blob(img.name, img.id)).toString()) as { rootfs: { diff_ids: string[] } };
    assert.deepEqual(config, img.config);
    assert.deepEqual(config.rootfs.diff_ids, img.diffIds);
    const layers: Buffer[] = [];
    for (const [i, l] of m.layers.entries()) {
      assert.equal(l.digest, img.layers[i]!.digest);
      assert.equal(l.mediaType, img.layers[i]!.mediaType);
      const data = await blob(img.name, l.digest);
      assert.equal(data.length, l.size);
      const plain = decompress(data, l.mediaType);
      assert.equal(hex(plain), img.diffIds[i]);
      assert.equal(plain.length, img.layers[i]!.uncompressedSize);
      layers.push(plain);
    }
    return { manifest: m, layers };
  }

  it('pushes busybox as an OCI image with exact digests, a root filesystem and users', async () => {
    const { manifest: m, layers } = await checkImage(fx.busybox, MediaTypes.ociManifest);
    assert.equal(m.config.mediaType, MediaTypes.ociConfig);
    assert.deepEqual(
      m.layers.map((l) => l.mediaType),
      [MediaTypes.ociLayerGzip],
    );
    assert.equal(fx.busybox.ref, `${registry.host}/berth-test/busybox:latest`);
    assert.equal(fx.busybox.config.architecture, hostPlatform().architecture);
    assert.deepEqual(fx.busybox.config.config.Cmd, ['sh']);
    assert.deepEqual(fx.busybox.config.config.Labels, { 'org.berth.test': 'busybox' });
    assert.deepEqual(fx.busybox.chainIds, fx.busybox.diffIds);

    const items = new Map((await untar(layers[0]!)).map((i) => [i.header.name, i]));
    assert.equal(items.get('bin/busybox')?.header.mode, 0o755);
    for (const applet of ['sh', 'ls', 'cat', 'sleep', 'id', 'stat']) {
      assert.equal(items.get(`bin/${applet}`)?.header.type, 'symlink', applet);
      assert.equal(items.get(`bin/${applet}`)?.header.linkname, 'busybox');
    }
    assert.match(items.get('etc/passwd')!.data.toString(), /^berth:x:1000:1000:/m);
    assert.match(items.get('etc/group')!.data.toString(), /^extra:x:2000:berth$/m);
    assert.equal(items.get('tmp/')?.header.mode, 0o1777);
    assert.equal(items.get('home/berth/')?.header.uid, 1000);

    const tagged = await manifest('berth-test/busybox', '1.35');
    assert.equal(tagged.headers['docker-content-digest'], fx.busybox.digest);
    assert.equal(fx.busybox135.ref, `${registry.host}/berth-test/busybox:1.35`);
    assert.equal(fx.busybox135.digest, fx.busybox.digest);
  });

  it('pushes the same busybox as a Docker schema2 image with the same image ID', async () => {
    const { manifest: m } = await checkImage(fx.busyboxDocker, MediaTypes.dockerManifest);
    assert.equal(m.config.mediaType, MediaTypes.dockerConfig);
    assert.deepEqual(
      m.layers.map((l) => l.mediaType),
      [MediaTypes.dockerLayerGzip],
    );
    assert.equal(fx.busyboxDocker.id, fx.busybox.id);
    assert.equal(fx.busyboxDocker.layers[0]!.digest, fx.busybox.layers[0]!.digest);
    assert.notEqual(fx.busyboxDocker.digest, fx.busybox.digest);
  });

  it('pushes layered with gzip, zstd and uncompressed layers whose merge matches LAYERED_EXPECT', async () => {
    const { manifest: m, layers } = await checkImage(fx.layered, MediaTypes.ociManifest);
    assert.deepEqual(
      m.layers.map((l) => l.mediaType),
      [MediaTypes.ociLayerGzip, MediaTypes.ociLayerGzip, MediaTypes.ociLayerZstd, MediaTypes.ociLayer],
    );
    assert.equal(fx.layered.layers[0]!.digest, fx.busybox.layers[0]!.digest, 'shares the busybox base layer');
    assert.equal(fx.layered.chainIds[0], fx.busybox.chainIds[0]);
    assert.equal(fx.layered.chainIds[1], sha256(`${fx.layered.diffIds[0]} ${fx.layered.diffIds[1]}`));
    const c = fx.layered.config.config;
    assert.equal(c.User, '1000');
    assert.equal(c.WorkingDir, '/data');
    assert.deepEqual(c.Entrypoint, ['/bin/sh', '-c']);
    assert.deepEqual(c.Cmd, ['echo hi']);
    assert.equal(c.StopSignal, 'SIGINT');
    assert.deepEqual(c.ExposedPorts, { '8080/tcp': {} });
    assert.deepEqual(c.Volumes, { '/vol': {} });

    // A toy overlay merge, to prove LAYERED_EXPECT describes what the layers really say.
    const merged = new Map<string, TarItem>();
    const hardlinks = new Map<string, string>();
    for (const layer of layers) {
      for (const item of await untar(layer)) {
        const path = '/' + item.header.name.replace(/\/$/, '');
        const base = path.slice(path.lastIndexOf('/') + 1);
        const dir = path.slice(0, path.lastIndexOf('/'));
        if (base === '.wh..wh..opq') {
          for (const p of [...merged.keys()]) if (p.startsWith(dir + '/')) merged.delete(p);
        } else if (base.startsWith('.wh.')) {
          const gone = `${dir}/${base.slice(4)}`;
          for (const p of [...merged.keys()]) if (p === gone || p.startsWith(gone + '/')) merged.delete(p);
        } else if (item.header.type === 'link') {
          const target = merged.get('/' + item.header.linkname!)!;
          merged.set(path, target);
          hardlinks.set(path, '/' + item.header.linkname!);
        } else {
          merged.set(path, item);
        }
      }
    }
    for (const p of LAYERED_EXPECT.absent) assert.ok(!merged.has(p), `${p} should be gone`);
    for (const e of LAYERED_EXPECT.present) {
      const got = merged.get(e.path);
      assert.ok(got, `${e.path} should exist`);
      const h = got.header;
      assert.equal(h.type, e.type, e.path);
      if (e.mode !== undefined) assert.equal(h.mode, e.mode, `${e.path} mode`);
      if (e.uid !== undefined) assert.equal(h.uid, e.uid, `${e.path} uid`);
      if (e.gid !== undefined) assert.equal(h.gid, e.gid, `${e.path} gid`);
      if (e.mtime) assert.equal(h.mtime?.getTime(), e.mtime.getTime(), `${e.path} mtime`);
      if (e.content !== undefined) assert.equal(got.data.toString(), e.content, `${e.path} content`);
      if (e.linkname !== undefined) assert.equal(h.linkname, e.linkname);
      if (e.hardlinkOf) assert.equal(hardlinks.get(e.path), e.hardlinkOf);
      if (e.devmajor !== undefined) assert.deepEqual([h.devmajor, h.devminor], [e.devmajor, e.devminor]);
      for (const [k, v] of Object.entries(e.xattrs ?? {})) assert.equal(h.pax?.[`SCHILY.xattr.${k}`], v);
    }
  });

  it('pushes user with a user name in its config', async () => {
    await checkImage(fx.user, MediaTypes.ociManifest);
    assert.equal(fx.user.config.config.User, 'berth');
    assert.equal(fx.user.layers[0]!.digest, fx.busybox.layers[0]!.digest);
  });

  for (const [key, indexType, manifestType] of [
    ['multiarch', MediaTypes.ociIndex, MediaTypes.ociManifest],
    ['multiarchDocker', MediaTypes.dockerManifestList, MediaTypes.dockerManifest],
  ] as const) {
    it(`pushes ${key} as an index with a Windows decoy first and the host platform`, async () => {
      const idx = fx[key];
      const res = await manifest(idx.name, 'latest');
      assert.equal(res.status, 200);
      assert.equal(res.headers['content-type'], indexType);
      assert.equal(res.headers['docker-content-digest'], idx.digest);
      const body = JSON.parse(res.body.toString()) as {
        mediaType: string;
        manifests: Array<{ mediaType: string; digest: string; platform: { os: string; architecture: string; variant?: string } }>;
      };
      assert.equal(body.mediaType, indexType);
      assert.deepEqual(
        body.manifests.map((m) => m.digest),
        idx.images.map((i) => i.digest),
      );
      assert.ok(body.manifests.every((m) => m.mediaType === manifestType));
      assert.equal(body.manifests[0]!.platform.os, 'windows');
      assert.equal(body.manifests[0]!.platform.architecture, hostPlatform().architecture);
      const platforms = body.manifests.map((m) => platformString(m.platform));
      for (const p of ['linux/amd64', 'linux/arm64/v8', 'linux/arm/v7']) assert.ok(platforms.includes(p), p);
      assert.equal(idx.windows.platform.os, 'windows');
      assert.equal(idx.host.platform.os, 'linux');
      assert.equal(idx.host.platform.architecture, hostPlatform().architecture);
      const { layers } = await checkImage(idx.host, manifestType);
      const [file] = await untar(layers[0]!);
      assert.equal(file!.header.name, 'platform');
      assert.equal(file!.data.toString(), `${platformString(idx.host.platform)}\n`);
    });
  }

  it('pushes the malicious images as valid registry content', async () => {
    const { dotdot, absolute, symlinkParent, hardlink } = fx.evil;
    const names = async (img: PushedImage): Promise<TarItem[]> => untar((await checkImage(img, MediaTypes.ociManifest)).layers[0]!);
    assert.ok((await names(dotdot)).some((i) => i.header.name === dotdot.entry && dotdot.entry.startsWith('../')));
    assert.ok((await names(absolute)).some((i) => i.header.name === absolute.entry && absolute.entry.startsWith('/')));
    assert.equal(absolute.escapePath, absolute.entry);
    const sp = await names(symlinkParent);
    assert.deepEqual([sp[0]!.header.name, sp[0]!.header.type, sp[0]!.header.linkname], ['link', 'symlink', '/tmp']);
    assert.equal(sp[1]!.header.name, symlinkParent.entry);
    assert.equal(symlinkParent.escapePath, `/tmp/${symlinkParent.escapeName}`);
    assert.ok(!existsSync(symlinkParent.escapePath!));
    const [h] = await names(hardlink);
    assert.deepEqual([h!.header.name, h!.header.type, h!.header.linkname], ['h', 'link', '../../etc/passwd']);
  });

  it('pushes a 1 GiB gzip bomb of about 1 MB that decompresses to its diff ID', async () => {
    const bomb = fx.evil.bomb;
    const layer = bomb.layers[0]!;
    assert.ok(layer.size < 2 << 20, `compressed size ${layer.size}`);
    assert.equal(layer.uncompressedSize, BOMB_BYTES + 1536);
    const data = await blob(bomb.name, layer.digest);
    // Stream the decompression: 1 GiB must never be in memory.
    const hash = createHash('sha256');
    let total = 0;
    let first: Buffer | undefined;
    await pipeline(Readable.from([data]), zlib.createGunzip(), async (chunks: AsyncIterable<Buffer>) => {
      for await (const c of chunks) {
        first ??= Buffer.from(c.subarray(0, 512));
        hash.update(c);
        total += c.length;
      }
    });
    assert.equal(total, layer.uncompressedSize);
    assert.equal('sha256:' + hash.digest('hex'), layer.diffId);
    assert.equal(first!.subarray(0, 5).toString(), 'zeros');
  });

  it('serves a registry behind htpasswd that refuses anonymous clients and accepts the user', async () => {
    const auth = { user: 'berth', password: 's3cret pass' };
    const reg = await startRegistry({ htpasswd: auth });
    try {
      const anon = await get(`${reg.url}/v2/`);
      assert.equal(anon.status, 401);
      assert.match(String(anon.headers['www-authenticate']), /^Basic realm="berth-test"/);
      assert.equal((await get(`${reg.url}/v2/`, { headers: { authorization: basic('berth', 'wrong') } })).status, 401);
      assert.equal((await get(`${reg.url}/v2/`, { headers: { authorization: basic(auth.user, auth.password) } })).status, 200);

      const img = await pushRandomImage(reg.host, 'bench/random', 'v1', 2, 300_000, 'zstd', { auth });
      assert.equal(img.layers.length, 2);
      assert.ok(
        img.layers.every((l) => l.mediaType === MediaTypes.ociLayerZstd && l.size > 300_000),
        'random data does not compress',
      );
      const m = await get(`${reg.url}/v2/bench/random/manifests/v1`, {
        headers: { accept: MediaTypes.ociManifest, authorization: basic(auth.user, auth.password) },
      });
      assert.equal(m.headers['docker-content-digest'], img.digest);
      assert.equal((await get(`${reg.url}/v2/bench/random/manifests/v1`, { headers: { accept: MediaTypes.ociManifest } })).status, 401);
    } finally {
      await reg.stop();
    }
    assert.ok(!existsSync(reg.dataDir), 'the temp dir is removed');
    assert.throws(() => process.kill(reg.pid, 0), /ESRCH/, 'the registry process is gone');
  });

  describe('proxy', () => {
    let proxy: RegistryProxy;
    afterEach(async () => {
      await proxy?.stop();
    });

    const layer = (): { name: string; digest: string; size: number } => ({
      name: 'berth-test/busybox',
      digest: fx.busybox.layers[0]!.digest,
      size: fx.busybox.layers[0]!.size,
    });

    it('passes requests through and records them with all headers', async () => {
      proxy = await startRegistryProxy(registry.host);
      const res = await get(`${proxy.url}/v2/berth-test/busybox/manifests/latest`, { headers: { accept: MediaTypes.ociManifest, 'x-test': 'yes' } });
      assert.equal(res.headers['docker-content-digest'], fx.busybox.digest);
      assert.equal(proxy.requests.length, 1);
      assert.equal(proxy.requests[0]!.headers['x-test'], 'yes');
      assert.equal(proxy.requests[0]!.status, 200);
    });

    it('runs a bearer-token flow with scopes, credentials and anonymous tokens', async () => {
      proxy = await startRegistryProxy(registry.host, { bearer: { user: 'tok', password: 'pw' } });
      const base = await get(`${proxy.url}/v2/`);
      assert.equal(base.status, 401);
      assert.equal(base.headers['www-authenticate'], `Bearer realm="${proxy.url}/token",service="berth-test"`);
      const path = `/v2/berth-test/busybox/manifests/latest`;
      const challenge = await get(proxy.url + path);
      assert.equal(challenge.status, 401);
      assert.equal(challenge.headers['www-authenticate'], `Bearer realm="${proxy.url}/token",service="berth-test",scope="repository:berth-test/busybox:pull"`);

      const tokenUrl = `${proxy.url}/token?service=berth-test&scope=repository:berth-test/busybox:pull`;
      assert.equal((await get(tokenUrl)).status, 401, 'no credentials');
      assert.equal((await get(tokenUrl, { headers: { authorization: basic('tok', 'nope') } })).status, 401, 'wrong credentials');
      const issued = await get(tokenUrl, { headers: { authorization: basic('tok', 'pw') } });
      assert.equal(issued.status, 200);
      const t = JSON.parse(issued.body.toString()) as { token: string; access_token: string; expires_in: number };
      assert.equal(t.token, t.access_token);
      assert.equal(t.expires_in, 300);
      assert.equal(proxy.tokens[0]!.user, 'tok');

      const ok = await get(proxy.url + path, { headers: { authorization: `Bearer ${t.token}`, accept: MediaTypes.ociManifest } });
      assert.equal(ok.status, 200);
      assert.equal(ok.headers['docker-content-digest'], fx.busybox.digest);
      assert.equal((await get(`${proxy.url}/v2/`, { headers: { authorization: `Bearer ${t.token}` } })).status, 200);
      assert.equal(
        (await get(`${proxy.url}/v2/berth-test/layered/manifests/latest`, { headers: { authorization: `Bearer ${t.token}` } })).status,
        401,
        'token scoped to another repo',
      );
      assert.equal((await get(proxy.url + path, { headers: { authorization: 'Bearer forged' } })).status, 401);

      proxy.bearer = { anonymous: true, pathPrefix: '/v2/berth-test/layered/' };
      assert.equal((await get(proxy.url + path, { headers: { accept: MediaTypes.ociManifest } })).status, 200, 'outside the prefix');
      const anon = await get(`${proxy.url}/token?service=berth-test&scope=repository:berth-test/layered:pull`);
      assert.equal(anon.status, 200);
      const at = (JSON.parse(anon.body.toString()) as { token: string }).token;
      const layered = await get(`${proxy.url}/v2/berth-test/layered/manifests/latest`, {
        headers: { authorization: `Bearer ${at}`, accept: MediaTypes.ociManifest },
      });
      assert.equal(layered.headers['docker-content-digest'], fx.layered.digest);
    });

    it('lets the pusher push through a token-protected proxy, one token per repository', async () => {
      proxy = await startRegistryProxy(registry.host, { bearer: { user: 'tok', password: 'pw' } });
      const img = await pushRandomImage(proxy.host, 'bench/through-proxy', 'v1', 1, 10_000, 'gzip', { auth: { user: 'tok', password: 'pw' } });
      assert.equal((await manifest('bench/through-proxy', 'v1')).headers['docker-content-digest'], img.digest);
      assert.ok(
        proxy.requests.some((r) => r.method === 'PUT' && r.path.includes('/blobs/uploads/')),
        'the upload went through the proxy',
      );
      // Many repositories at once: each keeps its own token.
      const again = await pushFixtures(proxy.host, { auth: { user: 'tok', password: 'pw' } });
      assert.equal(again.layered.digest, fx.layered.digest);
      assert.ok(proxy.tokens.length >= 10);
    });

    it('corrupts exactly one byte of a blob', async () => {
      const { name, digest, size } = layer();
      proxy = await startRegistryProxy(registry.host, { faults: [{ kind: 'corrupt', digest, offset: 100 }] });
      const good = await blob(name, digest);
      const bad = await get(`${proxy.url}/v2/${name}/blobs/${digest}`);
      assert.equal(bad.status, 200);
      assert.equal(bad.body.length, size);
      assert.notEqual(hex(bad.body), digest);
      const diffs = [...bad.body.keys()].filter((i) => bad.body[i] !== good[i]);
      assert.deepEqual(diffs, [100]);
      // Other blobs pass untouched.
      const config = await get(`${proxy.url}/v2/${name}/blobs/${fx.busybox.id}`);
      assert.equal(hex(config.body), fx.busybox.id);
    });

    it('truncates a blob by closing the connection after N bytes', async () => {
      const { name, digest, size } = layer();
      proxy = await startRegistryProxy(registry.host, { faults: [{ kind: 'truncate', digest, afterBytes: 1000 }] });
      const res = await get(`${proxy.url}/v2/${name}/blobs/${digest}`);
      assert.equal(res.headers['content-length'], String(size));
      assert.equal(res.body.length, 1000);
      assert.equal(res.complete, false);
    });

    it('lies about Content-Length both ways', async () => {
      const { name, digest, size } = layer();
      proxy = await startRegistryProxy(registry.host, { faults: [{ kind: 'wrong-length', digest, contentLength: size - 100 }] });
      const short = await get(`${proxy.url}/v2/${name}/blobs/${digest}`);
      assert.equal(short.headers['content-length'], String(size - 100));
      assert.equal(short.body.length, size - 100);
      assert.equal(short.complete, true);
      proxy.faults = [{ kind: 'wrong-length', digest, contentLength: size + 100 }];
      const long = await get(`${proxy.url}/v2/${name}/blobs/${digest}`);
      assert.equal(long.headers['content-length'], String(size + 100));
      assert.equal(long.body.length, size);
      assert.equal(long.complete, false);
    });

    it('stalls a blob after some bytes until the client gives up', async () => {
      const { name, digest } = layer();
      proxy = await startRegistryProxy(registry.host, { faults: [{ kind: 'stall', digest, afterBytes: 100 }] });
      const t0 = Date.now();
      const res = await get(`${proxy.url}/v2/${name}/blobs/${digest}`, { idleMs: 500 });
      assert.ok(Date.now() - t0 >= 450);
      assert.equal(res.status, 200);
      assert.equal(res.body.length, 100);
      assert.equal(res.complete, false);
    });

    it('fails the first K requests with 500, then serves the blob', async () => {
      const { name, digest } = layer();
      proxy = await startRegistryProxy(registry.host, { faults: [{ kind: 'fail', digest, times: 2 }] });
      const statuses: number[] = [];
      for (let i = 0; i < 3; i++) {
        const res = await get(`${proxy.url}/v2/${name}/blobs/${digest}`);
        statuses.push(res.status);
        if (res.status === 200) assert.equal(hex(res.body), digest);
      }
      assert.deepEqual(statuses, [500, 500, 200]);
      assert.equal(proxy.faults[0]!.hits, 3);
    });

    for (const crossOrigin of [false, true]) {
      it(`redirects blob GETs to ${crossOrigin ? 'another origin' : 'a second path'} and records whether Authorization followed`, async () => {
        const { name, digest } = layer();
        proxy = await startRegistryProxy(registry.host, { faults: [{ kind: 'redirect', digest, crossOrigin }], bearer: { anonymous: true } });
        const t = JSON.parse((await get(`${proxy.url}/token?scope=repository:${name}:pull`)).body.toString()) as { token: string };
        const res = await get(`${proxy.url}/v2/${name}/blobs/${digest}`, { headers: { authorization: `Bearer ${t.token}` } });
        assert.equal(res.status, 307);
        const location = new URL(String(res.headers.location));
        assert.equal(location.host, crossOrigin ? proxy.redirectHost : proxy.host);
        // A well-behaved client drops Authorization on the redirect; the proxy records what came.
        const followed = await get(location.toString());
        assert.equal(hex(followed.body), digest);
        await get(location.toString(), { headers: { authorization: `Bearer ${t.token}` } });
        const redirected = proxy.redirected();
        assert.equal(redirected.length, 2);
        assert.equal(redirected[0]!.headers.authorization, undefined);
        assert.equal(redirected[1]!.headers.authorization, `Bearer ${t.token}`);
        assert.equal(redirected[0]!.server, crossOrigin ? 'redirect' : 'main');
      });
    }

    it('serves crafted manifests: schema1 and an unknown media type', async () => {
      const body = schema1Manifest('berth-test/old', 'latest');
      proxy = await startRegistryProxy(registry.host, {
        manifests: [
          { name: 'berth-test/old', reference: 'latest', contentType: MediaTypes.dockerSchema1Signed, body },
          { name: 'berth-test/weird', reference: 'v1', contentType: 'application/vnd.example.unknown+json', body: '{"schemaVersion":2}' },
        ],
      });
      const old = await get(`${proxy.url}/v2/berth-test/old/manifests/latest`);
      assert.equal(old.headers['content-type'], MediaTypes.dockerSchema1Signed);
      assert.equal(JSON.parse(old.body.toString()).schemaVersion, 1);
      assert.equal(old.headers['docker-content-digest'], hex(body));
      const head = await get(`${proxy.url}/v2/berth-test/weird/manifests/v1`, { method: 'HEAD' });
      assert.equal(head.headers['content-type'], 'application/vnd.example.unknown+json');
      assert.equal(head.body.length, 0);
    });

    it('adds upstream Basic credentials in front of an htpasswd registry', async () => {
      const auth = { user: 'up', password: 'stream' };
      const reg = await startRegistry({ htpasswd: auth });
      try {
        proxy = await startRegistryProxy(reg.host, { upstreamAuth: auth });
        assert.equal((await get(`${proxy.url}/v2/`)).status, 200);
        assert.equal((await get(`${reg.url}/v2/`)).status, 401);
      } finally {
        await reg.stop();
      }
    });
  });
});
