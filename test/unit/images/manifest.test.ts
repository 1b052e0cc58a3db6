import assert from 'node:assert/strict';
import { isKind } from '../../../src/common/errors.js';
import { imageUser } from '../../../src/images/image-service.js';
import {
  MediaType,
  chainIds,
  manifestKind,
  parseImageConfig,
  parseIndex,
  parseManifest,
  selectPlatform,
  sha256Digest,
  verifyDigest,
  type ImageIndex,
} from '../../../src/images/manifest.js';
import { decodeAuthField, parseChallenge } from '../../../src/images/registry/auth.js';

const d = (c: string) => `sha256:${c.repeat(64)}`;
const json = (o: unknown) => Buffer.from(JSON.stringify(o));

describe('images: manifests, configs, platforms', () => {
  it('classifies by content type, falling back to the document, and refuses schema1 clearly', () => {
    assert.equal(manifestKind(MediaType.OciIndex, json({}), 'x'), 'index');
    assert.equal(manifestKind(MediaType.DockerList + '; charset=utf-8', json({}), 'x'), 'index');
    assert.equal(manifestKind(MediaType.DockerManifest, json({}), 'x'), 'manifest');
    assert.equal(manifestKind('application/json', json({ mediaType: MediaType.OciManifest }), 'x'), 'manifest');
    assert.equal(manifestKind('', json({ manifests: [] }), 'x'), 'index');
    assert.throws(() => manifestKind(MediaType.DockerSchema1Signed, json({}), 'r/x:1'), /r\/x:1: is a Docker schema1 manifest, which berth does not support/);
    assert.throws(() => manifestKind('', json({ schemaVersion: 1 }), 'x'), /schema1/);
    assert.throws(
      () => manifestKind('application/vnd.example.thing', json({}), 'x'),
      (e) => isKind(e, 'FailedPrecondition') && /unsupported media type "application\/vnd.example.thing"/.test((e as Error).message),
    );
  });

  it('refuses an ambiguous document: a mediaType other than the served kind, an index with layers, a manifest with manifests', () => {
    const amb = (e: unknown, re: RegExp) => isKind(e, 'FailedPrecondition') && re.test((e as Error).message);
    // Served as a manifest, says it is an index (and the reverse).
    assert.throws(
      () => manifestKind(MediaType.OciManifest, json({ mediaType: MediaType.OciIndex, manifests: [] }), 'r/x:1'),
      (e) =>
        amb(
          e,
          /r\/x:1: is ambiguous: served as manifest type "application\/vnd.oci.image.manifest.v1\+json" but the document says its mediaType is "application\/vnd.oci.image.index.v1\+json"/,
        ),
    );
    assert.throws(
      () => manifestKind(MediaType.DockerList, json({ mediaType: MediaType.DockerManifest }), 'x'),
      (e) => amb(e, /is ambiguous: served as index/),
    );
    assert.throws(
      () => manifestKind(MediaType.OciIndex, json({ mediaType: 'application/vnd.example' }), 'x'),
      (e) => amb(e, /is ambiguous/),
    );
    // A long registry string is clipped in the message.
    assert.throws(
      () => manifestKind(MediaType.OciIndex, json({ mediaType: 'z'.repeat(100_000) }), 'x'),
      (e) => amb(e, /"z{200}\.\.\. \(99800 more characters\)"/) && (e as Error).message.length < 600,
    );
    // Same kind by another spelling is not ambiguous.
    assert.equal(manifestKind(MediaType.DockerManifest, json({ mediaType: MediaType.OciManifest }), 'x'), 'manifest');
    assert.equal(manifestKind(MediaType.OciIndex, json({ mediaType: MediaType.DockerList }), 'x'), 'index');
    const desc = { mediaType: MediaType.OciManifest, digest: d('a'), size: 1 };
    const cfg = { mediaType: MediaType.OciConfig, digest: d('c'), size: 1 };
    assert.throws(
      () => parseIndex(json({ manifests: [desc], layers: [] }), 'i'),
      (e) => amb(e, /i: is ambiguous: an index with "config" or "layers"/),
    );
    assert.throws(
      () => parseIndex(json({ manifests: [desc], config: cfg }), 'i'),
      (e) => amb(e, /an index with "config" or "layers"/),
    );
    assert.throws(
      () => parseManifest(json({ schemaVersion: 2, config: cfg, layers: [], manifests: [desc] }), 'm'),
      (e) => amb(e, /m: is ambiguous: an image manifest with a "manifests" field/),
    );
  });

  it('parses manifests and refuses unknown layer types and non-image configs', () => {
    const m = {
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config: { mediaType: MediaType.OciConfig, digest: d('c'), size: 10 },
      layers: [
        { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d('a'), size: 5 },
        { mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', digest: d('b'), size: 6 },
        { mediaType: 'application/vnd.docker.image.rootfs.diff.tar', digest: d('e'), size: 7 },
      ],
    };
    assert.deepEqual(
      parseManifest(json(m), 'x').layers.map((l) => l.compression),
      ['gzip', 'zstd', 'none'],
    );
    const weird = { ...m, layers: [{ mediaType: 'application/x-rar', digest: d('a'), size: 5 }] };
    assert.throws(() => parseManifest(json(weird), 'img'), /img: layer sha256:a+ has unsupported media type "application\/x-rar"/);
    const artifact = { ...m, config: { mediaType: 'application/vnd.cncf.helm.config.v1+json', digest: d('c'), size: 1 } };
    assert.throws(() => parseManifest(json(artifact), 'img'), /not an image config/);
    assert.throws(() => parseManifest(json({ ...m, config: { ...m.config, digest: 'sha256:xyz' } }), 'img'), /invalid digest/);
    assert.throws(() => parseManifest(Buffer.from('{'), 'img'), /img: not valid JSON/);
  });

  it('selects this platform from an index, never another OS, and says what was offered', () => {
    const entry = (os: string, architecture: string, variant?: string, c = 'a') => ({
      mediaType: MediaType.OciManifest,
      digest: d(c),
      size: 1,
      platform: { os, architecture, ...(variant ? { variant } : {}) },
    });
    const index: ImageIndex = parseIndex(
      json({
        manifests: [
          entry('windows', 'amd64', undefined, '1'),
          entry('linux', 'arm', 'v6', '2'),
          entry('linux', 'arm', 'v7', '3'),
          entry('linux', 'amd64', undefined, '4'),
          entry('linux', 'arm64', 'v8', '5'),
        ],
      }),
      'x',
    );
    assert.equal(selectPlatform(index, { os: 'linux', architecture: 'amd64' }, 'x').digest, d('4'));
    assert.equal(selectPlatform(index, { os: 'linux', architecture: 'arm', variant: 'v7' }, 'x').digest, d('3'));
    assert.equal(selectPlatform(index, { os: 'linux', architecture: 'arm64', variant: 'v8' }, 'x').digest, d('5'));
    const noVariant = parseIndex(json({ manifests: [entry('linux', 'arm64', undefined, '6')] }), 'x');
    assert.equal(selectPlatform(noVariant, { os: 'linux', architecture: 'arm64', variant: 'v8' }, 'x').digest, d('6'));
    assert.throws(
      () => selectPlatform(index, { os: 'linux', architecture: 's390x' }, 'img'),
      (e) =>
        isKind(e, 'NotFound') &&
        /img: no image for this node's platform linux\/s390x \(the index offers: windows\/amd64, linux\/arm\/v6, linux\/arm\/v7, linux\/amd64, linux\/arm64\/v8\)/.test(
          (e as Error).message,
        ),
    );
  });

  it('lists at most 10 offered platforms, each clipped, when none fits', () => {
    const manifests = Array.from({ length: 25_000 }, (_, i) => ({
      mediaType: MediaType.OciManifest,
      digest: d('a'),
      size: 1,
      platform: { os: i === 0 ? 'o'.repeat(10_000) : `os${i}`, architecture: 'amd64' },
    }));
    const index = parseIndex(json({ manifests }), 'x');
    assert.throws(
      () => selectPlatform(index, { os: 'linux', architecture: 'amd64' }, 'img'),
      (e) => {
        const msg = (e as Error).message;
        return (
          isKind(e, 'NotFound') &&
          /the index offers: o{200}\.\.\. \(\d+ more characters\), os1\/amd64, .*, os9\/amd64 and 24990 more\)$/.test(msg) &&
          !msg.includes('os10/') &&
          msg.length < 1000
        );
      },
    );
  });

  it('computes chain IDs as the OCI spec defines them', () => {
    const [a, b, c] = [d('1'), d('2'), d('3')];
    const chain = chainIds([a, b, c]);
    assert.equal(chain[0], a);
    assert.equal(chain[1], sha256Digest(`${a} ${b}`));
    assert.equal(chain[2], sha256Digest(`${chain[1]} ${c}`));
  });

  it('verifies digests', () => {
    const data = Buffer.from('hello');
    verifyDigest(data, sha256Digest(data), 'x');
    assert.throws(
      () => verifyDigest(data, d('0'), 'blob'),
      (e) => isKind(e, 'DataLoss') && /blob: content has digest sha256:2cf24dba/.test((e as Error).message),
    );
  });

  it('parses the run config and derives the CRI user', () => {
    const cfg = parseImageConfig(
      json({
        architecture: 'amd64',
        os: 'linux',
        config: {
          User: '1000:1000',
          Env: ['A=1'],
          Entrypoint: ['/bin/sh', '-c'],
          Cmd: ['echo hi'],
          WorkingDir: '/data',
          StopSignal: 'SIGINT',
          Volumes: { '/vol': {} },
          Labels: { a: 'b' },
          ExposedPorts: { '8080/tcp': {} },
        },
        rootfs: { type: 'layers', diff_ids: [d('1')] },
      }),
      'x',
    );
    assert.deepEqual(cfg.run, {
      user: '1000:1000',
      env: ['A=1'],
      entrypoint: ['/bin/sh', '-c'],
      cmd: ['echo hi'],
      workingDir: '/data',
      stopSignal: 'SIGINT',
      volumes: ['/vol'],
      labels: { a: 'b' },
      exposedPorts: ['8080/tcp'],
    });
    assert.deepEqual(imageUser(cfg), { uid: 1000, username: '' });
    assert.deepEqual(imageUser({ ...cfg, run: { ...cfg.run, user: 'berth:extra' } }), { uid: undefined, username: 'berth' });
    assert.deepEqual(imageUser({ ...cfg, run: { ...cfg.run, user: '' } }), { uid: undefined, username: '' });
    // All digits above the largest uid is no uid (CreateContainer refuses it): a username, which kubelet's runAsNonRoot refuses.
    assert.deepEqual(imageUser({ ...cfg, run: { ...cfg.run, user: '4294967296' } }), { uid: undefined, username: '4294967296' });
    assert.deepEqual(imageUser({ ...cfg, run: { ...cfg.run, user: '99999999999999999999999:0' } }), { uid: undefined, username: '99999999999999999999999' });
    assert.deepEqual(imageUser({ ...cfg, run: { ...cfg.run, user: '4294967295' } }), { uid: 4294967295, username: '' });
    assert.throws(() => parseImageConfig(json({ config: {} }), 'cfg'), /cfg: has no rootfs.diff_ids/);
  });

  it('parses auth challenges and Docker auth fields', () => {
    assert.deepEqual(parseChallenge('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"'), {
      scheme: 'bearer',
      params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull' },
    });
    assert.deepEqual(parseChallenge('Basic realm="x"'), { scheme: 'basic', params: { realm: 'x' } });
    assert.equal(parseChallenge('Negotiate abc'), undefined);
    assert.equal(parseChallenge(undefined), undefined);
    assert.deepEqual(decodeAuthField(Buffer.from('u:p:with:colons').toString('base64')), { username: 'u', password: 'p:with:colons' });
    assert.throws(() => decodeAuthField(Buffer.from('nocolon').toString('base64')), /auth.auth is not base64/);
  });
});
