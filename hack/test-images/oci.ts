/**
 * Builds OCI and Docker images offline and pushes them to a registry over the OCI
 * distribution API. The image tests and the benchmark use it; berth's own code is not
 * used here on purpose, so a bug in berth cannot hide behind the same bug in its test
 * data.
 *
 * The life of a test image: layer entries → a tar stream (tar-stream, or raw ustar
 * bytes for malicious layers) → compressed with gzip, zstd or not at all, hashing both
 * sides on the way (digest and diff ID) → an image config naming the diff IDs → a
 * manifest naming the config and the layers → optionally an index over several
 * platforms → pushed blob by blob, manifests last.
 *
 * Everything is deterministic (fixed mtimes, gzip without a timestamp), so the standard
 * fixtures have the same digests from one run to the next, except the malicious ones
 * whose escape names carry a random suffix.
 */
import { spawn, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createReadStream, createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import tar from 'tar-stream';

// ---------------------------------------------------------------------------------------
// Media types and small types

/** The media types the builder writes. */
export const MediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

export type Compression = 'gzip' | 'zstd' | 'none';
export type ManifestFormat = 'oci' | 'docker';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
  'os.version'?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
}

/** Credentials for registries that want Basic auth or a token fetched with Basic auth. */
export interface RegistryAuth {
  user: string;
  password: string;
}

/** Every file the builder writes gets this mtime unless an entry says otherwise. */
export const FIXED_MTIME = new Date('2024-01-01T00:00:00Z');
const FIXED_CREATED = FIXED_MTIME.toISOString();

/** The PATH every fixture image sets. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** The host's platform in OCI terms (Node's `x64` is OCI's `amd64`). */
export function hostPlatform(): Platform {
  switch (process.arch) {
    case 'x64':
      return { os: 'linux', architecture: 'amd64' };
    case 'arm64':
      return { os: 'linux', architecture: 'arm64' };
    case 'arm':
      return { os: 'linux', architecture: 'arm', variant: 'v7' };
    case 'ia32':
      return { os: 'linux', architecture: '386' };
    case 'ppc64':
      return { os: 'linux', architecture: 'ppc64le' };
    default:
      return { os: 'linux', architecture: process.arch };
  }
}

/** `os/arch[/variant]`, the form `docker pull --platform` takes. */
export function platformString(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

export function sha256(data: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

/** Chain IDs as the snapshotter keys them: chain[0] = diff[0], chain[n] = sha256(chain[n-1] + " " + diff[n]). */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) out.push(out.length === 0 ? d : sha256(`${out[out.length - 1]} ${d}`));
  return out;
}

// ---------------------------------------------------------------------------------------
// Layers

/** Content of a big file, produced in chunks so it never sits in memory whole. */
export interface StreamedContent {
  size: number;
  chunks: () => AsyncIterable<Buffer> | Iterable<Buffer>;
}

/**
 * One tar entry. Paths are written exactly as given (Docker writes `bin/sh`, no leading
 * slash); directories get their trailing `/` added. Mode 0 is not representable (tar-stream
 * replaces it with the default).
 */
export interface LayerEntry {
  path: string;
  type: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: Date;
  content?: Buffer | string | StreamedContent;
  /** Target of a symlink, or the path (from the layer root) a hardlink points at. */
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** Written as PAX `SCHILY.xattr.<name>` records. */
  xattrs?: Record<string, string>;
}

/** A layer: entries for tar-stream, or raw tar bytes taken as they are. */
export type LayerSpec = LayerEntry[] | Buffer;

/** A built blob: in memory, or in a file for big ones. */
export interface Blob {
  mediaType: string;
  digest: string;
  size: number;
  data?: Buffer;
  file?: string;
}

export interface BuiltLayer extends Blob {
  compression: Compression;
  /** sha256 of the uncompressed tar. */
  diffId: string;
  uncompressedSize: number;
}

const DEFAULT_MODES: Record<LayerEntry['type'], number> = {
  file: 0o644,
  directory: 0o755,
  symlink: 0o777,
  link: 0o644,
  'character-device': 0o666,
  'block-device': 0o660,
  fifo: 0o644,
};

/** The layer media type for a compression in a manifest format. */
export function layerMediaType(compression: Compression, format: ManifestFormat = 'oci'): string {
  if (format === 'docker') {
    if (compression === 'zstd') throw new Error('Docker schema2 has no zstd layer media type; use an OCI manifest');
    return compression === 'gzip' ? MediaTypes.dockerLayerGzip : MediaTypes.dockerLayer;
  }
  return { gzip: MediaTypes.ociLayerGzip, zstd: MediaTypes.ociLayerZstd, none: MediaTypes.ociLayer }[compression];
}

/** The uncompressed tar of `spec`, as a stream of chunks. */
export function tarStream(spec: LayerSpec): AsyncIterable<Buffer> {
  if (Buffer.isBuffer(spec)) return Readable.from([spec]);
  const pack = tar.pack();
  writeEntries(pack, spec).then(
    () => pack.finalize(),
    (err: Error) => pack.destroy(err),
  );
  // streamx readables are async-iterable; its typings do not say so.
  return pack as unknown as AsyncIterable<Buffer>;
}

async function writeEntries(pack: tar.Pack, entries: LayerEntry[]): Promise<void> {
  for (const e of entries) {
    const header: Partial<tar.Header> & { name: string; pax?: Record<string, string> } = {
      name: e.type === 'directory' && !e.path.endsWith('/') ? `${e.path}/` : e.path,
      type: e.type,
      mode: e.mode ?? DEFAULT_MODES[e.type],
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: e.mtime ?? FIXED_MTIME,
      linkname: e.linkname,
      devmajor: e.devmajor,
      devminor: e.devminor,
    };
    if (e.xattrs) header.pax = Object.fromEntries(Object.entries(e.xattrs).map(([k, v]) => [`SCHILY.xattr.${k}`, v]));
    const c = e.content;
    if (c === undefined || typeof c === 'string' || Buffer.isBuffer(c)) {
      // An empty file still needs its (empty) body written, or tar-stream waits for it.
      const body = c !== undefined ? Buffer.from(c) : e.type === 'file' ? Buffer.alloc(0) : undefined;
      await new Promise<void>((resolve, reject) => {
        const cb = (err?: Error | null): void => (err ? reject(err) : resolve());
        if (body) pack.entry(header, body, cb);
        else pack.entry(header, cb);
      });
      continue;
    }
    header.size = c.size;
    let w!: Writable; // a streamx writable; the Node shape is what we use of it
    const done = new Promise<void>((resolve, reject) => {
      w = pack.entry(header, (err) => (err ? reject(err) : resolve())) as unknown as Writable;
    });
    for await (const chunk of c.chunks()) {
      if (!w.write(chunk)) await once(w, 'drain');
    }
    w.end();
    await done;
  }
}

/** A compressor as a pair of streams, whatever runs it (zlib in-process, or the zstd binary). */
function compressor(compression: Compression, gzipLevel?: number): { input: Writable; output: Readable; done: Promise<void> } {
  if (compression === 'gzip') {
    const z = zlib.createGzip({ level: gzipLevel ?? zlib.constants.Z_DEFAULT_COMPRESSION });
    return { input: z, output: z, done: Promise.resolve() };
  }
  if (compression === 'none') {
    const p = new PassThrough();
    return { input: p, output: p, done: Promise.resolve() };
  }
  const child = spawn('zstd', ['-q', '-c'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`zstd exited with ${code}: ${stderr}`))));
  });
  return { input: child.stdin, output: child.stdout, done };
}

/**
 * Builds one layer: tars `spec`, compresses it, and computes the digest (of the blob) and
 * the diff ID (of the tar). With `file`, the blob is written there instead of kept in
 * memory.
 */
export async function buildLayer(spec: LayerSpec, compression: Compression = 'gzip', opts: { file?: string; gzipLevel?: number } = {}): Promise<BuiltLayer> {
  const diff = createHash('sha256');
  const blob = createHash('sha256');
  let uncompressedSize = 0;
  let size = 0;
  const parts: Buffer[] = [];
  const sink = opts.file ? createWriteStream(opts.file) : undefined;
  const { input, output, done } = compressor(compression, opts.gzipLevel);
  const source = tarStream(spec);
  async function* counted(): AsyncGenerator<Buffer> {
    for await (const chunk of source) {
      diff.update(chunk);
      uncompressedSize += chunk.length;
      yield chunk;
    }
  }
  const consume = async (): Promise<void> => {
    for await (const chunk of output as AsyncIterable<Buffer>) {
      blob.update(chunk);
      size += chunk.length;
      if (!sink) parts.push(chunk);
      else if (!sink.write(chunk)) await once(sink, 'drain');
    }
    if (sink) {
      sink.end();
      await once(sink, 'close');
    }
  };
  await Promise.all([pipeline(Readable.from(counted()), input), consume(), done]);
  const diffId = 'sha256:' + diff.digest('hex');
  return {
    mediaType: layerMediaType(compression),
    compression,
    digest: 'sha256:' + blob.digest('hex'),
    size,
    diffId,
    uncompressedSize,
    ...(sink ? { file: opts.file } : { data: Buffer.concat(parts) }),
  };
}

/** One entry for {@link rawTar}: written byte for byte, names and link targets unchecked. */
export interface RawTarEntry {
  name: string;
  type: 'file' | 'directory' | 'symlink' | 'link';
  content?: Buffer | string;
  linkname?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: Date;
}

const TYPEFLAGS = { file: '0', link: '1', symlink: '2', directory: '5' } as const;

/** A 512-byte ustar header, with the name taken verbatim (no normalization at all). */
export function ustarHeader(h: RawTarEntry & { size: number }): Buffer {
  const buf = Buffer.alloc(512);
  const field = (value: string, offset: number, length: number): void => {
    if (Buffer.byteLength(value) > length) throw new Error(`tar header field too long: ${value}`);
    buf.write(value, offset, length, 'utf8');
  };
  const octal = (n: number, offset: number, length: number): void => field(n.toString(8).padStart(length - 1, '0') + '\0', offset, length);
  field(h.name, 0, 100);
  octal(h.mode ?? (h.type === 'directory' ? 0o755 : 0o644), 100, 8);
  octal(h.uid ?? 0, 108, 8);
  octal(h.gid ?? 0, 116, 8);
  octal(h.size, 124, 12);
  octal(Math.floor((h.mtime ?? FIXED_MTIME).getTime() / 1000), 136, 12);
  buf.fill(' ', 148, 156); // the checksum is computed over spaces in its own field
  field(TYPEFLAGS[h.type], 156, 1);
  if (h.linkname) field(h.linkname, 157, 100);
  field('ustar\0', 257, 6);
  field('00', 263, 2);
  octal(0, 329, 8);
  octal(0, 337, 8);
  let sum = 0;
  for (const b of buf) sum += b;
  field(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8);
  return buf;
}

/** A complete tar archive of `entries` with our own ustar writer, for layers tar-stream should not touch. */
export function rawTar(entries: RawTarEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const body = e.type === 'file' && e.content !== undefined ? Buffer.from(e.content) : Buffer.alloc(0);
    parts.push(ustarHeader({ ...e, size: body.length }), body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------
// Images, manifests and indexes

/** The `config` part of an OCI image config (Docker's names, which OCI kept). */
export interface ImageRunConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  WorkingDir?: string;
  StopSignal?: string;
  Volumes?: Record<string, object>;
  Labels?: Record<string, string>;
  ExposedPorts?: Record<string, object>;
}

export interface ImageConfigJson extends Platform {
  created: string;
  config: ImageRunConfig;
  rootfs: { type: 'layers'; diff_ids: string[] };
  history: Array<{ created: string; created_by: string; empty_layer?: boolean }>;
}

export interface ImageSpec {
  layers: BuiltLayer[];
  config?: ImageRunConfig;
  /** Defaults to the host's. */
  platform?: Platform;
  format?: ManifestFormat;
}

export interface BuiltImage {
  format: ManifestFormat;
  platform: Platform;
  config: ImageConfigJson;
  configBlob: Blob & { data: Buffer };
  /** The layers as the manifest names them (media types follow the format). */
  layers: BuiltLayer[];
  manifest: Blob & { data: Buffer };
}

export interface BuiltIndex {
  format: ManifestFormat;
  manifest: Blob & { data: Buffer };
  images: BuiltImage[];
}

function jsonBlob(mediaType: string, value: unknown): Blob & { data: Buffer } {
  const data = Buffer.from(JSON.stringify(value));
  return { mediaType, digest: sha256(data), size: data.length, data };
}

function descriptor(b: Blob, platform?: Platform): Descriptor {
  return { mediaType: b.mediaType, digest: b.digest, size: b.size, ...(platform ? { platform } : {}) };
}

/** An image config and manifest over already built layers. */
export function buildImage(spec: ImageSpec): BuiltImage {
  const format = spec.format ?? 'oci';
  const platform = spec.platform ?? hostPlatform();
  const layers = spec.layers.map((l) => ({ ...l, mediaType: layerMediaType(l.compression, format) }));
  const config: ImageConfigJson = {
    created: FIXED_CREATED,
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    ...(platform['os.version'] ? { 'os.version': platform['os.version'] } : {}),
    config: spec.config ?? {},
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((_, i) => ({ created: FIXED_CREATED, created_by: `berth-test layer ${i}` })),
  };
  const configBlob = jsonBlob(format === 'oci' ? MediaTypes.ociConfig : MediaTypes.dockerConfig, config);
  const manifest = jsonBlob(format === 'oci' ? MediaTypes.ociManifest : MediaTypes.dockerManifest, {
    schemaVersion: 2,
    mediaType: format === 'oci' ? MediaTypes.ociManifest : MediaTypes.dockerManifest,
    config: descriptor(configBlob),
    layers: layers.map((l) => descriptor(l)),
  });
  return { format, platform, config, configBlob, layers, manifest };
}

/** An OCI index or Docker manifest list over images of one format, in the given order. */
export function buildIndex(images: BuiltImage[]): BuiltIndex {
  const format = images[0]?.format ?? 'oci';
  if (images.some((i) => i.format !== format)) throw new Error('an index mixes OCI and Docker manifests');
  const mediaType = format === 'oci' ? MediaTypes.ociIndex : MediaTypes.dockerManifestList;
  const manifest = jsonBlob(mediaType, {
    schemaVersion: 2,
    mediaType,
    manifests: images.map((i) => descriptor(i.manifest, i.platform)),
  });
  return { format, manifest, images };
}

/**
 * A Docker schema1 signed manifest (which registry 2.8 no longer accepts on push), for a
 * proxy to serve so tests can check that berth refuses it with a clear error.
 */
export function schema1Manifest(name: string, tag: string): Buffer {
  const body = {
    schemaVersion: 1,
    name,
    tag,
    architecture: hostPlatform().architecture,
    fsLayers: [{ blobSum: sha256('') }],
    history: [{ v1Compatibility: JSON.stringify({ id: 'a'.repeat(64), created: FIXED_CREATED, container_config: { Cmd: ['sh'] } }) }],
    signatures: [
      {
        header: { jwk: { crv: 'P-256', kid: 'BERT:TEST', kty: 'EC', x: 'AAAA', y: 'AAAA' }, alg: 'ES256' },
        signature: 'AAAA',
        protected: 'AAAA',
      },
    ],
  };
  return Buffer.from(JSON.stringify(body, null, 3));
}

// ---------------------------------------------------------------------------------------
// Pushing

type Body = Buffer | (() => Readable);

interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/**
 * Pushes blobs and manifests to one registry over plain HTTP: HEAD to skip blobs it
 * has, then POST + monolithic PUT, manifests last. Speaks Basic auth and, when the
 * registry answers 401 with a Bearer challenge, fetches a token from its realm.
 * `close()` drops the kept-alive connections.
 */
export class RegistryPusher {
  private readonly agent: http.Agent;
  private readonly base: string;
  /** Bearer tokens are scoped to a repository, so each repository keeps its own. */
  private readonly tokens = new Map<string, string>();

  /** @param registry `host:port` of a registry: plain HTTP, or HTTPS with any certificate when `tls`. */
  constructor(
    readonly registry: string,
    private readonly opts: { auth?: RegistryAuth; tls?: boolean } = {},
  ) {
    this.agent = opts.tls ? new https.Agent({ keepAlive: true, maxSockets: 8, rejectUnauthorized: false }) : new http.Agent({ keepAlive: true, maxSockets: 8 });
    this.base = `${opts.tls ? 'https' : 'http'}://${registry}`;
  }

  close(): void {
    this.agent.destroy();
  }

  /** Uploads `blob` to repository `name` unless it is there already. */
  async pushBlob(name: string, blob: Blob): Promise<void> {
    const head = await this.request('HEAD', `/v2/${name}/blobs/${blob.digest}`);
    if (head.status === 200) return;
    const start = await this.request('POST', `/v2/${name}/blobs/uploads/`);
    if (start.status !== 202 || !start.headers.location) throw httpError('starting an upload', start);
    // Location may be relative or absolute and usually carries its own query (_state).
    const url = new URL(start.headers.location, this.base);
    url.searchParams.set('digest', blob.digest);
    const body: Body =
      blob.data ??
      (
        (file: string) => () =>
          createReadStream(file)
      )(blob.file!);
    const put = await this.request('PUT', url.toString(), {
      body,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(blob.size) },
    });
    if (put.status !== 201) throw httpError(`uploading ${blob.digest} to ${name}`, put);
  }

  /** PUTs a manifest under `reference` (a tag or its digest); returns its digest. */
  async pushManifest(name: string, reference: string, manifest: Blob & { data: Buffer }): Promise<string> {
    const res = await this.request('PUT', `/v2/${name}/manifests/${reference}`, {
      body: manifest.data,
      headers: { 'content-type': manifest.mediaType, 'content-length': String(manifest.size) },
    });
    if (res.status !== 201) throw httpError(`pushing manifest ${name}:${reference}`, res);
    const served = res.headers['docker-content-digest'];
    if (served && served !== manifest.digest) throw new Error(`registry computed ${served} for manifest ${manifest.digest}`);
    return manifest.digest;
  }

  /** Pushes an image's blobs and manifest; tags it with each of `tags` (none: by digest only). */
  async pushImage(name: string, image: BuiltImage, tags: string[] = []): Promise<string> {
    await Promise.all([...image.layers, image.configBlob].map((b) => this.pushBlob(name, b)));
    for (const ref of tags.length > 0 ? tags : [image.manifest.digest]) await this.pushManifest(name, ref, image.manifest);
    return image.manifest.digest;
  }

  /** Pushes every image of an index by digest, then the index under each tag. */
  async pushIndex(name: string, index: BuiltIndex, tags: string[]): Promise<string> {
    for (const image of index.images) await this.pushImage(name, image);
    for (const tag of tags) await this.pushManifest(name, tag, index.manifest);
    return index.manifest.digest;
  }

  private async request(method: string, target: string, opts: { body?: Body; headers?: Record<string, string> } = {}): Promise<Response> {
    const repo = /^\/v2\/(.+?)\/(?:blobs|manifests|tags)\//.exec(new URL(target, this.base).pathname)?.[1] ?? '';
    let res = await this.send(method, target, { ...opts, repo });
    if (res.status === 401 && (await this.authenticate(res, repo))) res = await this.send(method, target, { ...opts, repo });
    return res;
  }

  /** Answers a 401 challenge; false when there is nothing more to try. */
  private async authenticate(res: Response, repo: string): Promise<boolean> {
    const challenge = String(res.headers['www-authenticate'] ?? '');
    if (/^basic/i.test(challenge)) return false; // Basic was sent already when we had it
    const params = Object.fromEntries([...challenge.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (!/^bearer/i.test(challenge) || !params.realm) return false;
    const url = new URL(params.realm);
    if (params.service) url.searchParams.set('service', params.service);
    // Ask for push as well: the challenge for a HEAD only names pull.
    if (params.scope) url.searchParams.set('scope', params.scope.replace(/:pull$/, ':pull,push'));
    const token = await this.send('GET', url.toString(), {
      headers: this.opts.auth ? { authorization: basic(this.opts.auth) } : {},
      noAuth: true,
    });
    if (token.status !== 200) throw httpError('fetching a registry token', token);
    const parsed = JSON.parse(token.body.toString()) as { token?: string; access_token?: string };
    this.tokens.set(repo, `Bearer ${parsed.token ?? parsed.access_token}`);
    return true;
  }

  private send(method: string, target: string, opts: { body?: Body; headers?: Record<string, string>; noAuth?: boolean; repo?: string }): Promise<Response> {
    const url = new URL(target, this.base);
    const headers: Record<string, string> = { ...opts.headers };
    // Credentials go to the registry only, never to another host an upload Location names.
    const authorization = this.tokens.get(opts.repo ?? '') ?? (this.opts.auth ? basic(this.opts.auth) : undefined);
    if (authorization && !opts.noAuth && url.host === this.registry) headers.authorization = authorization;
    return new Promise((resolve, reject) => {
      const req = (url.protocol === 'https:' ? https.request : http.request)(url, { method, headers, agent: this.agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      });
      req.on('error', reject);
      const body = opts.body;
      if (body === undefined) req.end();
      else if (Buffer.isBuffer(body)) req.end(body);
      else pipeline(body(), req).catch(reject);
    });
  }
}

function basic(auth: RegistryAuth): string {
  return 'Basic ' + Buffer.from(`${auth.user}:${auth.password}`).toString('base64');
}

function httpError(what: string, res: Response): Error {
  return new Error(`${what}: HTTP ${res.status} ${res.body.toString().slice(0, 500)}`);
}

// ---------------------------------------------------------------------------------------
// What tests get back

/** A pushed image, with everything a test may want to compare against. */
export interface PushedImage {
  /** `registry/name:tag`, or `registry/name@digest` for an untagged image of an index. */
  ref: string;
  /** `registry/name`. */
  repo: string;
  /** The repository name without the registry, e.g. `berth-test/busybox`. */
  name: string;
  tag: string | undefined;
  /** The manifest digest. */
  digest: string;
  /** `registry/name@digest`, what RepoDigests should hold. */
  digestRef: string;
  mediaType: string;
  manifestSize: number;
  /** The config digest, which is the image ID. */
  id: string;
  configDigest: string;
  configSize: number;
  config: ImageConfigJson;
  platform: Platform;
  layers: Array<{ digest: string; diffId: string; mediaType: string; size: number; uncompressedSize: number; compression: Compression }>;
  diffIds: string[];
  chainIds: string[];
  /** Sum of the compressed layer sizes. */
  layersSize: number;
}

/** A pushed OCI index or Docker manifest list. */
export interface PushedIndex {
  ref: string;
  repo: string;
  name: string;
  tag: string;
  digest: string;
  digestRef: string;
  mediaType: string;
  /** In index order (the non-Linux entry comes first). */
  images: PushedImage[];
  /** The entry a Linux node of this host's architecture must pick. */
  host: PushedImage;
  /** The entry no Linux node may ever pick. */
  windows: PushedImage;
}

/** A malicious image; a safe runtime must refuse to unpack it. */
export interface EvilImage extends PushedImage {
  /** The offending tar entry's name. */
  entry: string;
  /** The file name a broken unpacker would create outside the snapshot. */
  escapeName: string;
  /** The absolute host path it would write, where that does not depend on the snapshot's location. */
  escapePath?: string;
}

export interface Fixtures {
  registry: string;
  /** `berth-test/busybox:latest` (OCI). */
  busybox: PushedImage;
  /** The same image as `berth-test/busybox:1.35`. */
  busybox135: PushedImage;
  /** The same layer and config as a Docker schema2 image, `berth-test/busybox-docker:latest`. */
  busyboxDocker: PushedImage;
  /** `berth-test/layered:latest`: busybox + gzip + zstd + uncompressed layers; see {@link LAYERED_EXPECT}. */
  layered: PushedImage;
  /** `berth-test/user:latest`: busybox with `User: "berth"`. */
  user: PushedImage;
  /** `berth-test/multiarch:latest`, an OCI index. */
  multiarch: PushedIndex;
  /** `berth-test/multiarch-docker:latest`, a Docker manifest list. */
  multiarchDocker: PushedIndex;
  evil: {
    dotdot: EvilImage;
    absolute: EvilImage;
    symlinkParent: EvilImage;
    hardlink: EvilImage;
    /** A gzip layer of 1 GiB of zeros (`escapeName`/`entry` name the zero file). */
    bomb: EvilImage;
  };
}

function pushed(registry: string, name: string, tag: string | undefined, image: BuiltImage): PushedImage {
  const repo = `${registry}/${name}`;
  const digest = image.manifest.digest;
  const layers = image.layers.map(({ digest: d, diffId, mediaType, size, uncompressedSize, compression }) => ({
    digest: d,
    diffId,
    mediaType,
    size,
    uncompressedSize,
    compression,
  }));
  return {
    ref: tag ? `${repo}:${tag}` : `${repo}@${digest}`,
    repo,
    name,
    tag,
    digest,
    digestRef: `${repo}@${digest}`,
    mediaType: image.manifest.mediaType,
    manifestSize: image.manifest.size,
    id: image.configBlob.digest,
    configDigest: image.configBlob.digest,
    configSize: image.configBlob.size,
    config: image.config,
    platform: image.platform,
    layers,
    diffIds: layers.map((l) => l.diffId),
    chainIds: chainIds(layers.map((l) => l.diffId)),
    layersSize: layers.reduce((n, l) => n + l.size, 0),
  };
}

function pushedIndex(registry: string, name: string, tag: string, index: BuiltIndex): PushedIndex {
  const images = index.images.map((i) => pushed(registry, name, undefined, i));
  const host = platformString(hostPlatform());
  const find = (pred: (p: PushedImage) => boolean, what: string): PushedImage => {
    const found = images.find(pred);
    if (!found) throw new Error(`index ${name} has no ${what} entry`);
    return found;
  };
  return {
    ref: `${registry}/${name}:${tag}`,
    repo: `${registry}/${name}`,
    name,
    tag,
    digest: index.manifest.digest,
    digestRef: `${registry}/${name}@${index.manifest.digest}`,
    mediaType: index.manifest.mediaType,
    images,
    host: find((p) => platformString(p.platform) === host || platformString({ ...p.platform, variant: undefined }) === host, host),
    windows: find((p) => p.platform.os === 'windows', 'windows'),
  };
}

// ---------------------------------------------------------------------------------------
// The standard fixture set

const BUSYBOX_BIN = '/bin/busybox';

const PASSWD = [
  'root:x:0:0:root:/root:/bin/sh',
  'berth:x:1000:1000:berth:/home/berth:/bin/sh',
  'alt:x:1001:1001:alt:/home/alt:/bin/sh',
  'nobody:x:65534:65534:nobody:/nonexistent:/bin/false',
  '',
].join('\n');

const GROUP = ['root:x:0:', 'berth:x:1000:', 'alt:x:1001:', 'extra:x:2000:berth', 'nogroup:x:65534:', ''].join('\n');

/** The busybox root filesystem: the static binary, every applet as a symlink, users and groups. */
export function busyboxEntries(): LayerEntry[] {
  if (!existsSync(BUSYBOX_BIN)) throw new Error(`${BUSYBOX_BIN} is missing: install Debian's busybox-static`);
  const applets = execFileSync(BUSYBOX_BIN, ['--list'], { encoding: 'utf8' })
    .split('\n')
    .filter((a) => a && a !== 'busybox' && !a.includes('/'))
    .sort();
  const dir = (path: string, mode = 0o755, uid = 0, gid = uid): LayerEntry => ({ path, type: 'directory', mode, uid, gid });
  return [
    dir('bin'),
    { path: 'bin/busybox', type: 'file', mode: 0o755, content: readFileSync(BUSYBOX_BIN) },
    ...applets.map((a): LayerEntry => ({ path: `bin/${a}`, type: 'symlink', linkname: 'busybox' })),
    dir('dev'),
    dir('etc'),
    { path: 'etc/passwd', type: 'file', content: PASSWD },
    { path: 'etc/group', type: 'file', content: GROUP },
    dir('home'),
    dir('home/berth', 0o755, 1000),
    dir('home/alt', 0o755, 1001),
    dir('proc'),
    dir('root', 0o700),
    dir('sys'),
    dir('tmp', 0o1777),
    dir('usr'),
    dir('usr/bin'),
    dir('var'),
  ];
}

/** Owner, mtimes and modes the layered image sets, shared by its layers and {@link LAYERED_EXPECT}. */
const L = {
  zMtime: new Date('2001-09-09T01:46:40Z'),
  ownedMtime: new Date('2020-02-02T02:02:02Z'),
  bMtime: new Date('2010-10-10T10:10:10Z'),
};

/** Layer 1 (gzip) of `layered`: the files later layers delete, replace and hide. */
function layeredLayer1(): LayerEntry[] {
  return [
    { path: 'data', type: 'directory' },
    { path: 'data/a', type: 'file', content: 'a from layer 1\n' },
    { path: 'data/b', type: 'file', content: 'b from layer 1\n' },
    { path: 'data/dir', type: 'directory' },
    { path: 'data/dir/x', type: 'file', content: 'x\n' },
    { path: 'data/dir/y', type: 'file', content: 'y\n' },
    { path: 'data/keep', type: 'file', content: 'keep\n' },
    { path: 'data/gone-dir', type: 'directory' },
    { path: 'data/gone-dir/file', type: 'file', content: 'gone\n' },
  ];
}

/** Layer 2 (zstd): whiteouts, an opaque dir and every kind of entry an unpacker must preserve. */
function layeredLayer2(): LayerEntry[] {
  return [
    { path: 'bin', type: 'directory' },
    { path: 'bin/suid', type: 'file', mode: 0o4755, content: '#!/bin/sh\necho suid\n' },
    { path: 'data', type: 'directory' },
    { path: 'data/.wh.a', type: 'file', content: '' },
    { path: 'data/.wh.gone-dir', type: 'file', content: '' },
    { path: 'data/b', type: 'file', mode: 0o600, mtime: L.bMtime, content: 'b from layer 2\n' },
    { path: 'data/dir', type: 'directory' },
    { path: 'data/dir/.wh..wh..opq', type: 'file', content: '' },
    { path: 'data/dir/z', type: 'file', uid: 1000, gid: 1000, mtime: L.zMtime, content: 'z\n' },
    { path: 'data/sgid', type: 'directory', mode: 0o2775, gid: 1000 },
    { path: 'data/keep2', type: 'file', content: 'keep2\n' },
    { path: 'data/hard', type: 'link', linkname: 'data/keep2' },
    { path: 'data/link', type: 'symlink', linkname: '/data/keep' },
    { path: 'data/fifo', type: 'fifo', mode: 0o640 },
    { path: 'data/xattr', type: 'file', content: 'has an xattr\n', xattrs: { 'user.berth': 'yes' } },
    { path: 'data/owned', type: 'file', mode: 0o640, uid: 1000, gid: 1000, mtime: L.ownedMtime, content: 'owned\n' },
    { path: 'data/rmlater', type: 'file', content: 'removed by layer 3\n' },
    { path: 'dev', type: 'directory' },
    { path: 'dev/null0', type: 'character-device', mode: 0o666, devmajor: 1, devminor: 3 },
  ];
}

/** Layer 3 (uncompressed). */
function layeredLayer3(): LayerEntry[] {
  return [
    { path: 'data', type: 'directory' },
    { path: 'data/.wh.rmlater', type: 'file', content: '' },
    { path: 'data/plain', type: 'file', content: 'from the uncompressed layer\n' },
  ];
}

/** What the unpacked `layered` image must look like (paths absolute in the rootfs; modes include setuid/setgid). */
export interface ExpectedEntry {
  path: string;
  type: 'file' | 'directory' | 'symlink' | 'character-device' | 'fifo';
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: Date;
  content?: string;
  linkname?: string;
  /** Same inode as this path. */
  hardlinkOf?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Record<string, string>;
}

/** The merged view of `berth-test/layered` after all layers, for unpack and overlay tests. */
export const LAYERED_EXPECT: { present: ExpectedEntry[]; absent: string[] } = {
  present: [
    { path: '/bin/busybox', type: 'file', mode: 0o755 },
    { path: '/bin/suid', type: 'file', mode: 0o4755, uid: 0, gid: 0, content: '#!/bin/sh\necho suid\n' },
    { path: '/data/b', type: 'file', mode: 0o600, mtime: L.bMtime, content: 'b from layer 2\n' },
    { path: '/data/dir', type: 'directory', mode: 0o755 },
    { path: '/data/dir/z', type: 'file', mode: 0o644, uid: 1000, gid: 1000, mtime: L.zMtime, content: 'z\n' },
    { path: '/data/keep', type: 'file', content: 'keep\n', mtime: FIXED_MTIME },
    { path: '/data/keep2', type: 'file', content: 'keep2\n' },
    { path: '/data/hard', type: 'file', content: 'keep2\n', hardlinkOf: '/data/keep2' },
    { path: '/data/link', type: 'symlink', linkname: '/data/keep' },
    { path: '/data/sgid', type: 'directory', mode: 0o2775, uid: 0, gid: 1000 },
    { path: '/data/fifo', type: 'fifo', mode: 0o640 },
    { path: '/data/xattr', type: 'file', content: 'has an xattr\n', xattrs: { 'user.berth': 'yes' } },
    { path: '/data/owned', type: 'file', mode: 0o640, uid: 1000, gid: 1000, mtime: L.ownedMtime, content: 'owned\n' },
    { path: '/data/plain', type: 'file', content: 'from the uncompressed layer\n' },
    { path: '/dev/null0', type: 'character-device', mode: 0o666, devmajor: 1, devminor: 3 },
    { path: '/tmp', type: 'directory', mode: 0o1777 },
  ],
  absent: ['/data/a', '/data/dir/x', '/data/dir/y', '/data/gone-dir', '/data/rmlater'],
};

const BUSYBOX_CONFIG: ImageRunConfig = { Env: [`PATH=${DEFAULT_PATH}`], Cmd: ['sh'], Labels: { 'org.berth.test': 'busybox' } };

/** Size of the bomb's single file. */
export const BOMB_BYTES = 1 << 30;

/**
 * A gzip layer holding one 1 GiB file of zeros, made without compressing 1 GiB: each
 * chunk of zeros is deflated by a fresh compressor ending in a full flush, so its
 * output is byte-aligned and refers to nothing before it; those segments concatenate
 * into one valid deflate stream. Only the CRC and the diff ID need a pass over the
 * zeros, and that pass hashes one reused chunk.
 */
export function buildBombLayer(bytes = BOMB_BYTES): BuiltLayer {
  const chunk = Buffer.alloc(4 << 20);
  if (bytes % chunk.length !== 0) throw new Error(`bomb size must be a multiple of ${chunk.length}`);
  const header = ustarHeader({ name: 'zeros', type: 'file', size: bytes });
  const trailerZeros = Buffer.alloc(1024); // end-of-archive; the file needs no padding
  const flush = { level: 9, memLevel: 9, finishFlush: zlib.constants.Z_FULL_FLUSH };
  const headSeg = zlib.deflateRawSync(header, flush);
  const zeroSeg = zlib.deflateRawSync(chunk, flush);
  const tailSeg = zlib.deflateRawSync(trailerZeros, { level: 9 });
  const diff = createHash('sha256').update(header);
  let crc = zlib.crc32(header);
  for (let i = 0; i < bytes / chunk.length; i++) {
    diff.update(chunk);
    crc = zlib.crc32(chunk, crc);
  }
  diff.update(trailerZeros);
  crc = zlib.crc32(trailerZeros, crc);
  const uncompressedSize = header.length + bytes + trailerZeros.length;
  const gzHeader = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]); // deflate, no mtime, Unix
  const gzTrailer = Buffer.alloc(8);
  gzTrailer.writeUInt32LE(crc >>> 0, 0);
  gzTrailer.writeUInt32LE(uncompressedSize % 2 ** 32, 4);
  const data = Buffer.concat([gzHeader, headSeg, ...Array<Buffer>(bytes / chunk.length).fill(zeroSeg), tailSeg, gzTrailer]);
  return {
    mediaType: MediaTypes.ociLayerGzip,
    compression: 'gzip',
    digest: sha256(data),
    size: data.length,
    diffId: 'sha256:' + diff.digest('hex'),
    uncompressedSize,
    data,
  };
}

/** The deterministic fixtures, built once per process. */
interface StaticFixtures {
  busybox: BuiltImage;
  busyboxDocker: BuiltImage;
  layered: BuiltImage;
  user: BuiltImage;
  multiarch: BuiltIndex;
  multiarchDocker: BuiltIndex;
  bomb: BuiltImage;
}

let staticFixtures: Promise<StaticFixtures> | undefined;

function buildStaticFixtures(): Promise<StaticFixtures> {
  staticFixtures ??= (async () => {
    const [busyboxLayer, l1, l2, l3] = await Promise.all([
      buildLayer(busyboxEntries(), 'gzip'),
      buildLayer(layeredLayer1(), 'gzip'),
      buildLayer(layeredLayer2(), 'zstd'),
      buildLayer(layeredLayer3(), 'none'),
    ]);
    const host = hostPlatform();
    // The Windows entry comes first and has the host's architecture, so a picker that
    // looks only at the architecture, or takes the first entry, picks wrong.
    const platforms: Platform[] = [
      { os: 'windows', architecture: host.architecture, 'os.version': '10.0.17763.5329' },
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64', variant: 'v8' },
      { os: 'linux', architecture: 'arm', variant: 'v7' },
    ];
    if (!platforms.some((p) => p.os === 'linux' && p.architecture === host.architecture)) platforms.push(host);
    const platformLayers = await Promise.all(platforms.map((p) => buildLayer([{ path: 'platform', type: 'file', content: `${platformString(p)}\n` }], 'gzip')));
    const perPlatform = (format: ManifestFormat): BuiltIndex =>
      buildIndex(platforms.map((platform, i) => buildImage({ layers: [platformLayers[i]!], platform, format, config: { Cmd: ['cat', '/platform'] } })));
    return {
      busybox: buildImage({ layers: [busyboxLayer], config: BUSYBOX_CONFIG }),
      busyboxDocker: buildImage({ layers: [busyboxLayer], config: BUSYBOX_CONFIG, format: 'docker' }),
      layered: buildImage({
        layers: [busyboxLayer, l1, l2, l3],
        config: {
          User: '1000',
          Env: [`PATH=${DEFAULT_PATH}`],
          Entrypoint: ['/bin/sh', '-c'],
          Cmd: ['echo hi'],
          WorkingDir: '/data',
          StopSignal: 'SIGINT',
          ExposedPorts: { '8080/tcp': {} },
          Volumes: { '/vol': {} },
          Labels: { 'org.berth.test': 'layered' },
        },
      }),
      user: buildImage({ layers: [busyboxLayer], config: { ...BUSYBOX_CONFIG, User: 'berth', Labels: { 'org.berth.test': 'user' } } }),
      multiarch: perPlatform('oci'),
      multiarchDocker: perPlatform('docker'),
      bomb: buildImage({ layers: [buildBombLayer()], config: { Cmd: ['sh'] } }),
    };
  })();
  // A failed build must not poison later calls.
  staticFixtures.catch(() => (staticFixtures = undefined));
  return staticFixtures;
}

async function evilImage(build: (suffix: string) => { tar: Buffer; entry: string; escapeName: string; escapePath?: string }) {
  const suffix = randomBytes(6).toString('hex');
  const { tar: bytes, ...facts } = build(suffix);
  const layer = await buildLayer(bytes, 'gzip');
  return { image: buildImage({ layers: [layer], config: { Cmd: ['sh'] } }), facts };
}

/**
 * Pushes the standard fixture set to `registry` (`127.0.0.1:PORT`) and returns what each
 * image is, digests included, so tests can assert exact values. Builds are cached per
 * process; a second registry only pays for the uploads.
 */
export async function pushFixtures(registry: string, opts: { auth?: RegistryAuth; tls?: boolean } = {}): Promise<Fixtures> {
  const s = await buildStaticFixtures();
  const evils = await Promise.all([
    evilImage((x) => ({
      tar: rawTar([
        { name: 'ok', type: 'file', content: 'harmless\n' },
        { name: `../escape-${x}`, type: 'file', content: 'escaped\n' },
      ]),
      entry: `../escape-${x}`,
      escapeName: `escape-${x}`,
    })),
    evilImage((x) => ({
      tar: rawTar([
        { name: 'ok', type: 'file', content: 'harmless\n' },
        { name: `/abs-escape-${x}`, type: 'file', content: 'escaped\n' },
      ]),
      entry: `/abs-escape-${x}`,
      escapeName: `abs-escape-${x}`,
      escapePath: `/abs-escape-${x}`,
    })),
    evilImage((x) => ({
      tar: rawTar([
        { name: 'link', type: 'symlink', linkname: '/tmp' },
        { name: `link/escape-${x}`, type: 'file', content: 'escaped\n' },
      ]),
      entry: `link/escape-${x}`,
      escapeName: `escape-${x}`,
      escapePath: `/tmp/escape-${x}`,
    })),
    evilImage(() => ({
      tar: rawTar([{ name: 'h', type: 'link', linkname: '../../etc/passwd' }]),
      entry: 'h',
      escapeName: 'passwd',
    })),
  ]);
  const pusher = new RegistryPusher(registry, opts);
  try {
    const push = (name: string, image: BuiltImage, tags: string[]): Promise<string> => pusher.pushImage(name, image, tags);
    const names = ['evil/dotdot', 'evil/absolute', 'evil/symlink-parent', 'evil/hardlink'];
    await Promise.all([
      push('berth-test/busybox', s.busybox, ['latest', '1.35']),
      push('berth-test/busybox-docker', s.busyboxDocker, ['latest']),
      push('berth-test/layered', s.layered, ['latest']),
      push('berth-test/user', s.user, ['latest']),
      pusher.pushIndex('berth-test/multiarch', s.multiarch, ['latest']),
      pusher.pushIndex('berth-test/multiarch-docker', s.multiarchDocker, ['latest']),
      push('evil/bomb', s.bomb, ['latest']),
      ...evils.map((e, i) => push(names[i]!, e.image, ['latest'])),
    ]);
    const evil = (i: number): EvilImage => ({ ...pushed(registry, names[i]!, 'latest', evils[i]!.image), ...evils[i]!.facts });
    return {
      registry,
      busybox: pushed(registry, 'berth-test/busybox', 'latest', s.busybox),
      busybox135: pushed(registry, 'berth-test/busybox', '1.35', s.busybox),
      busyboxDocker: pushed(registry, 'berth-test/busybox-docker', 'latest', s.busyboxDocker),
      layered: pushed(registry, 'berth-test/layered', 'latest', s.layered),
      user: pushed(registry, 'berth-test/user', 'latest', s.user),
      multiarch: pushedIndex(registry, 'berth-test/multiarch', 'latest', s.multiarch),
      multiarchDocker: pushedIndex(registry, 'berth-test/multiarch-docker', 'latest', s.multiarchDocker),
      evil: {
        dotdot: evil(0),
        absolute: evil(1),
        symlinkParent: evil(2),
        hardlink: evil(3),
        bomb: { ...pushed(registry, 'evil/bomb', 'latest', s.bomb), entry: 'zeros', escapeName: 'zeros' },
      },
    };
  } finally {
    pusher.close();
  }
}

/**
 * Pushes an image of `layerCount` layers, each a single file of `layerBytes`
 * incompressible random bytes, for pull benchmarks. Layers are streamed to temp files
 * (never held in memory whole) and the files are removed after the push.
 */
export async function pushRandomImage(
  registry: string,
  repo: string,
  tag: string,
  layerCount: number,
  layerBytes: number,
  compression: Compression = 'gzip',
  opts: { auth?: RegistryAuth } = {},
): Promise<PushedImage> {
  const dir = mkdtempSync(join(tmpdir(), 'berth-random-image-'));
  const pusher = new RegistryPusher(registry, opts);
  try {
    const layers: BuiltLayer[] = [];
    const build = async (i: number): Promise<void> => {
      const content: StreamedContent = {
        size: layerBytes,
        *chunks() {
          for (let left = layerBytes; left > 0; left -= 1 << 20) yield randomBytes(Math.min(left, 1 << 20));
        },
      };
      // Random data does not compress; level 1 spends the least time finding that out.
      layers[i] = await buildLayer([{ path: `layer-${i}.bin`, type: 'file', content }], compression, { file: join(dir, `layer-${i}`), gzipLevel: 1 });
    };
    // Compression runs off the main thread (zlib's pool, or zstd), so a few layers at once use the cores.
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < layerCount) await build(next++);
    };
    await Promise.all(Array.from({ length: Math.min(layerCount, availableParallelism()) }, worker));
    const image = buildImage({ layers, config: { Cmd: ['sh'], Labels: { 'org.berth.test': 'random' } } });
    await pusher.pushImage(repo, image, [tag]);
    return pushed(registry, repo, tag, image);
  } finally {
    pusher.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
