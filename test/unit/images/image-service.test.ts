/**
 * ImageService as any user, against a small registry of the test's own (an HTTP server
 * on 127.0.0.1 in this process) serving one image: its manifest, config and a gzip layer
 * of the caller's own files. The real content store, overlay snapshotter and
 * repositories in a temp dir sit behind it. Pulls from the real docker-registry, with
 * auth, mirrors and faults, are in test/e2e/images.test.ts.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { createLogger } from '../../../src/common/logger.js';
import { defaultConfig } from '../../../src/config/schema.js';
import { BlobRepository } from '../../../src/images/content/blob-repository.js';
import { ContentStore } from '../../../src/images/content/content-store.js';
import { ImageRepository } from '../../../src/images/image-repository.js';
import { ImageService } from '../../../src/images/image-service.js';
import { hostPlatform } from '../../../src/images/manifest.js';
import { OverlaySnapshotter } from '../../../src/images/snapshots/overlay.js';
import { SnapshotRepository } from '../../../src/images/snapshots/snapshot-repository.js';
import { openDatabase, type Db } from '../../../src/store/database.js';

const log = createLogger('error', () => undefined);
const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function layerTar(): Promise<Buffer> {
  const pack = tar.pack();
  const own = { uid: process.getuid!(), gid: process.getgid!(), mtime: new Date('2021-01-01T00:00:00Z') };
  pack.entry({ name: 'etc', type: 'directory', mode: 0o755, ...own });
  pack.entry({ name: 'etc/passwd', mode: 0o644, ...own }, 'root:x:0:0:root:/root:/bin/sh\n');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** A registry serving `test/app:v1`; `corrupt` serves the layer with one byte changed. */
interface FakeRegistry {
  host: string;
  requests: string[];
  corrupt: boolean;
  layerDigest: string;
  configDigest: string;
  manifestDigest: string;
  close(): Promise<void>;
}

async function startRegistry(): Promise<FakeRegistry> {
  const raw = await layerTar();
  const layer = gzipSync(raw);
  const p = hostPlatform();
  const config = Buffer.from(
    JSON.stringify({
      architecture: p.architecture,
      os: p.os,
      ...(p.variant ? { variant: p.variant } : {}),
      config: { Cmd: ['sh'], Env: ['PATH=/bin'], StopSignal: 'SIGQUIT' },
      rootfs: { type: 'layers', diff_ids: [sha256(raw)] },
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha256(layer), size: layer.length }],
    }),
  );
  // `many`: a manifest listing one layer over images.max_layers (the same blob each time).
  const many = Buffer.from(
    JSON.stringify({
      ...JSON.parse(manifest.toString()),
      layers: Array.from({ length: defaultConfig().images.max_layers + 1 }, () => ({
        mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
        digest: sha256(layer),
        size: layer.length,
      })),
    }),
  );
  const blobs = new Map([
    [sha256(config), config],
    [sha256(layer), layer],
  ]);
  const reg = { requests: [] as string[], corrupt: false, layerDigest: sha256(layer), configDigest: sha256(config), manifestDigest: sha256(manifest) };
  const server = http.createServer((req, res) => {
    reg.requests.push(`${req.method} ${req.url}`);
    const send = (status: number, body: Buffer, type = 'application/octet-stream', digest?: string): void => {
      res.writeHead(status, { 'content-type': type, 'content-length': body.length, ...(digest ? { 'docker-content-digest': digest } : {}) });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    const url = req.url ?? '';
    if (url === '/v2/') return send(200, Buffer.from('{}'), 'application/json');
    if (url === '/v2/test/app/manifests/many') return send(200, many, 'application/vnd.oci.image.manifest.v1+json', sha256(many));
    if (url === '/v2/test/app/manifests/v1' || url === `/v2/test/app/manifests/${reg.manifestDigest}`)
      return send(200, manifest, 'application/vnd.oci.image.manifest.v1+json', reg.manifestDigest);
    const m = /^\/v2\/test\/app\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url);
    const blob = m ? blobs.get(m[1]!) : undefined;
    if (blob) {
      const body = reg.corrupt && m![1] === reg.layerDigest ? Buffer.from(blob.map((b, i) => (i === 20 ? b ^ 1 : b))) : blob;
      return send(200, body);
    }
    send(404, Buffer.from(JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }] })), 'application/json');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return Object.assign(reg, { host, close: () => new Promise<void>((r) => server.close(() => r())) });
}

describe('images: ImageService against a registry of the test', () => {
  let dir: string;
  let db: Db;
  let reg: FakeRegistry;
  let svc: ImageService;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-img-svc-'));
    db = openDatabase(join(dir, 'berth.db'));
    reg = await startRegistry();
    const cfg = defaultConfig();
    svc = new ImageService({
      images: { ...cfg.images, pull_attempts: 1 },
      registries: () => ({}),
      content: new ContentStore(dir, new BlobRepository(db), log),
      snapshots: new OverlaySnapshotter(dir, new SnapshotRepository(db), log),
      repo: new ImageRepository(db),
      log,
      backoffMs: 1,
    });
  });
  afterEach(async () => {
    await svc.close();
    await reg.close();
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('pulls an image: config and layer stored, the layer unpacked, found by tag, digest and id', async () => {
    const ref = `${reg.host}/test/app:v1`;
    const img = await svc.pull(ref, undefined);
    assert.equal(img.id, reg.configDigest);
    assert.equal(img.manifestDigest, reg.manifestDigest);
    assert.deepEqual(img.config.run.cmd, ['sh']);
    assert.deepEqual(img.tags, [ref]);
    assert.equal(svc.find(ref)?.id, img.id);
    assert.equal(svc.find(`${reg.host}/test/app@${reg.manifestDigest}`)?.id, img.id);
    assert.equal(svc.find(img.id)?.id, img.id);
    assert.equal(img.config.run.stopSignal, 'SIGQUIT');
    assert.equal(svc.stopSignalOf(img.id), 'SIGQUIT', "a stop reads the image's STOPSIGNAL alone");
    assert.equal(svc.stopSignalOf(`sha256:${'0'.repeat(64)}`), undefined);
    const { options } = await svc.prepareContainerLayer('ctr', img);
    const lower = /lowerdir=([^,]+)/.exec(options)![1]!;
    assert.equal(readFileSync(join(lower, 'etc', 'passwd'), 'utf8'), 'root:x:0:0:root:/root:/bin/sh\n');
    await svc.removeContainerLayer('ctr');
  });

  it('pulls again without fetching a blob it has', async () => {
    await svc.pull(`${reg.host}/test/app:v1`, undefined);
    reg.requests.length = 0;
    await svc.pull(`${reg.host}/test/app:v1`, undefined);
    assert.deepEqual(
      reg.requests.filter((r) => r.includes('/blobs/')),
      [],
    );
  });

  it('refuses a corrupt layer with DataLoss and keeps no image, blob or snapshot of it', async () => {
    reg.corrupt = true;
    await assert.rejects(svc.pull(`${reg.host}/test/app:v1`, undefined), { kind: 'DataLoss', message: new RegExp(reg.layerDigest.slice(7, 20)) });
    assert.equal(svc.find(`${reg.host}/test/app:v1`), undefined);
    assert.deepEqual(svc.list(), []);
    await svc.collect();
    assert.deepEqual(readdirSync(join(dir, 'content', 'blobs', 'sha256')), []);
    assert.deepEqual(readdirSync(join(dir, 'snapshots')), []);
  });

  it('refuses an image with more layers than images.max_layers before downloading anything', async () => {
    const max = defaultConfig().images.max_layers;
    await assert.rejects(
      svc.pull(`${reg.host}/test/app:many`, undefined),
      (e: Error & { kind?: string }) =>
        e.kind === 'ResourceExhausted' &&
        new RegExp(`manifest sha256:[0-9a-f]{64} lists ${max + 1} layers, over images.max_layers \\(${max}\\)`).test(e.message),
    );
    assert.deepEqual(
      reg.requests.filter((r) => r.includes('/blobs/')),
      [],
    );
    assert.deepEqual(svc.list(), []);
  });

  it('answers NotFound for an image the registry does not have', async () => {
    await assert.rejects(svc.pull(`${reg.host}/test/app:v2`, undefined), { kind: 'NotFound' });
  });

  it('removes an image with its blobs and snapshots; a second remove finds nothing', async () => {
    const img = await svc.pull(`${reg.host}/test/app:v1`, undefined);
    assert.ok(readdirSync(join(dir, 'content', 'blobs', 'sha256')).length >= 2);
    assert.equal((await svc.remove(img.id))?.id, img.id);
    assert.equal(svc.find(img.id), undefined);
    assert.deepEqual(readdirSync(join(dir, 'content', 'blobs', 'sha256')), []);
    assert.deepEqual(readdirSync(join(dir, 'snapshots')), []);
    assert.deepEqual(await svc.collect(), { blobs: 0, snapshots: 0 });
    assert.equal(await svc.remove(img.id), undefined);
  });
});
