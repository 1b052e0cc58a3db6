/**
 * Parsing and checking what registries serve: OCI image indexes and manifests, Docker
 * manifest lists and schema2 manifests, and image configs. Pure functions; every
 * failure is a BerthError whose message names the thing that was wrong.
 *
 * Facts from the OCI image spec and Docker's registry spec: a descriptor is
 * {mediaType, digest, size, platform?}; an index lists manifests per platform; a
 * manifest names one config and the layers bottom-up; the config's rootfs.diff_ids are
 * the digests of the uncompressed layers, in the same order.
 */
import { createHash } from 'node:crypto';
import { BerthError, clip } from '../common/errors.js';

export const MediaType = {
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  DockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  DockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  DockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

/** What berth asks registries for, in order of preference. */
export const ACCEPTED_MANIFEST_TYPES = [MediaType.OciIndex, MediaType.DockerList, MediaType.OciManifest, MediaType.DockerManifest];

export type LayerCompression = 'gzip' | 'zstd' | 'none';

const LAYER_TYPES: Record<string, LayerCompression> = {
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'gzip',
  'application/vnd.docker.image.rootfs.diff.tar': 'none',
};

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
  urls?: string[];
}

export interface ImageManifest {
  mediaType: string;
  config: Descriptor;
  layers: Array<Descriptor & { compression: LayerCompression }>;
}

export interface ImageIndex {
  mediaType: string;
  manifests: Descriptor[];
}

/** The part of an image config containers are made from (OCI "config" object). */
export interface ImageRunConfig {
  user: string;
  env: string[];
  entrypoint: string[];
  cmd: string[];
  workingDir: string;
  stopSignal: string;
  volumes: string[];
  labels: Record<string, string>;
  exposedPorts: string[];
}

export interface ImageConfig {
  architecture: string;
  os: string;
  variant?: string;
  created?: string;
  diffIds: string[];
  run: ImageRunConfig;
}

const DIGEST = /^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$/;

export function isDigest(s: unknown): s is string {
  return typeof s === 'string' && DIGEST.test(s);
}

/** The digest of `data` in OCI form. */
export function sha256Digest(data: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

/** Throws DataLoss unless `data` has the digest it was fetched by. */
export function verifyDigest(data: Buffer, digest: string, what: string): void {
  const [alg] = digest.split(':');
  const actual =
    `${alg}:` +
    createHash(alg === 'sha512' ? 'sha512' : 'sha256')
      .update(data)
      .digest('hex');
  if (actual !== digest) throw new BerthError('DataLoss', `${what}: content has digest ${actual}, expected ${digest}`);
}

function bad(what: string, why: string): BerthError {
  return new BerthError('FailedPrecondition', `${what}: ${why}`);
}

function parseJson(data: Buffer, what: string): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = JSON.parse(data.toString('utf8'));
  } catch (err) {
    throw bad(what, `not valid JSON (${(err as Error).message})`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad(what, 'not a JSON object');
  return doc as Record<string, unknown>;
}

function parseDescriptor(d: unknown, what: string): Descriptor {
  if (typeof d !== 'object' || d === null) throw bad(what, 'descriptor is not an object');
  const o = d as Record<string, unknown>;
  if (typeof o.mediaType !== 'string') throw bad(what, 'descriptor has no mediaType');
  if (!isDigest(o.digest)) throw bad(what, `descriptor has an invalid digest ${JSON.stringify(o.digest)}`);
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) throw bad(what, `descriptor ${o.digest} has an invalid size`);
  const desc: Descriptor = { mediaType: o.mediaType, digest: o.digest, size: o.size };
  if (typeof o.platform === 'object' && o.platform !== null) {
    const p = o.platform as Record<string, unknown>;
    desc.platform = {
      os: String(p.os ?? ''),
      architecture: String(p.architecture ?? ''),
      ...(typeof p.variant === 'string' && p.variant !== '' ? { variant: p.variant } : {}),
    };
  }
  return desc;
}

/** index / manifest / undefined (anything else) for a manifest media type. */
function kindOf(mt: string): 'index' | 'manifest' | undefined {
  if (mt === MediaType.OciIndex || mt === MediaType.DockerList) return 'index';
  if (mt === MediaType.OciManifest || mt === MediaType.DockerManifest) return 'manifest';
  return undefined;
}

/**
 * Classifies a manifest document by its declared media type (the response's
 * Content-Type, or the document's own `mediaType`), refusing schema1 and unknown types.
 * A document whose own `mediaType` says otherwise than the Content-Type is refused:
 * one document read two ways by two clients is how the ambiguous-manifest attack works.
 */
export function manifestKind(contentType: string, data: Buffer, what: string): 'index' | 'manifest' {
  let mt = contentType.split(';')[0]!.trim();
  const doc = parseJson(data, what);
  if (mt === '' || mt === 'application/json' || mt === 'text/plain' || mt === 'application/octet-stream') {
    mt =
      typeof doc.mediaType === 'string'
        ? doc.mediaType
        : doc.manifests
          ? MediaType.OciIndex
          : doc.schemaVersion === 1
            ? MediaType.DockerSchema1
            : MediaType.OciManifest;
  }
  const kind = kindOf(mt);
  if (kind !== undefined) {
    if (typeof doc.mediaType === 'string' && kindOf(doc.mediaType) !== kind) {
      throw bad(
        what,
        `is ambiguous: served as ${kind} type "${mt}" but the document says its mediaType is ${JSON.stringify(clip(doc.mediaType))}; refusing it`,
      );
    }
    return kind;
  }
  if (mt === MediaType.DockerSchema1 || mt === MediaType.DockerSchema1Signed) {
    throw bad(
      what,
      'is a Docker schema1 manifest, which berth does not support (deprecated since 2017); push the image again with a current client to get a schema2 or OCI manifest',
    );
  }
  throw bad(what, `has unsupported media type ${JSON.stringify(clip(mt))}`);
}

export function parseIndex(data: Buffer, what: string): ImageIndex {
  const doc = parseJson(data, what);
  if (!Array.isArray(doc.manifests)) throw bad(what, 'index has no "manifests" array');
  if (doc.config !== undefined || doc.layers !== undefined) {
    throw bad(what, 'is ambiguous: an index with "config" or "layers" fields, which only an image manifest has; refusing it');
  }
  return {
    mediaType: typeof doc.mediaType === 'string' ? doc.mediaType : MediaType.OciIndex,
    manifests: doc.manifests.map((m, i) => parseDescriptor(m, `${what} manifests[${i}]`)),
  };
}

export function parseManifest(data: Buffer, what: string): ImageManifest {
  const doc = parseJson(data, what);
  if (doc.schemaVersion !== 2) throw bad(what, `schemaVersion ${JSON.stringify(doc.schemaVersion)} is not 2`);
  if (doc.manifests !== undefined) {
    throw bad(what, 'is ambiguous: an image manifest with a "manifests" field, which only an index has; refusing it');
  }
  const config = parseDescriptor(doc.config, `${what} config`);
  if (config.mediaType !== MediaType.OciConfig && config.mediaType !== MediaType.DockerConfig) {
    throw bad(what, `config has media type ${JSON.stringify(clip(config.mediaType))}, not an image config (is this an artifact rather than an image?)`);
  }
  if (!Array.isArray(doc.layers)) throw bad(what, 'manifest has no "layers" array');
  const layers = doc.layers.map((l, i) => {
    const d = parseDescriptor(l, `${what} layers[${i}]`);
    const compression = LAYER_TYPES[d.mediaType];
    if (compression === undefined) throw bad(what, `layer ${d.digest} has unsupported media type ${JSON.stringify(clip(d.mediaType))}`);
    return { ...d, compression };
  });
  return { mediaType: typeof doc.mediaType === 'string' ? doc.mediaType : MediaType.OciManifest, config, layers };
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

function keysOf(v: unknown): string[] {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? Object.keys(v).sort() : [];
}

export function parseImageConfig(data: Buffer, what: string): ImageConfig {
  const doc = parseJson(data, what);
  const rootfs = doc.rootfs as Record<string, unknown> | undefined;
  if (!rootfs || !Array.isArray(rootfs.diff_ids)) throw bad(what, 'has no rootfs.diff_ids');
  const diffIds = rootfs.diff_ids.map((d, i) => {
    if (!isDigest(d)) throw bad(what, `rootfs.diff_ids[${i}] is not a digest`);
    return d;
  });
  const c = (typeof doc.config === 'object' && doc.config !== null ? doc.config : {}) as Record<string, unknown>;
  const labels: Record<string, string> = {};
  if (typeof c.Labels === 'object' && c.Labels !== null) {
    for (const [k, v] of Object.entries(c.Labels)) if (typeof v === 'string') labels[k] = v;
  }
  return {
    architecture: String(doc.architecture ?? ''),
    os: String(doc.os ?? ''),
    ...(typeof doc.variant === 'string' && doc.variant !== '' ? { variant: doc.variant } : {}),
    ...(typeof doc.created === 'string' ? { created: doc.created } : {}),
    diffIds,
    run: {
      user: typeof c.User === 'string' ? c.User : '',
      env: strings(c.Env),
      entrypoint: strings(c.Entrypoint),
      cmd: strings(c.Cmd),
      workingDir: typeof c.WorkingDir === 'string' ? c.WorkingDir : '',
      stopSignal: typeof c.StopSignal === 'string' ? c.StopSignal : '',
      volumes: keysOf(c.Volumes),
      labels,
      exposedPorts: keysOf(c.ExposedPorts),
    },
  };
}

/** This node's platform in OCI terms. */
export function hostPlatform(): Platform {
  const arch =
    ({ x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' } as Record<string, string>)[process.arch] ??
    process.arch;
  if (arch === 'arm64') return { os: 'linux', architecture: 'arm64', variant: 'v8' };
  if (arch === 'arm') return { os: 'linux', architecture: 'arm', variant: `v${(process.config.variables as { arm_version?: string }).arm_version ?? '7'}` };
  return { os: 'linux', architecture: arch };
}

/**
 * Picks the manifest for `want` from an index: same os and architecture; for variants,
 * an exact match first, then an entry without variant (arm64's "v8" is the default).
 * Among equals the first listed wins, as in every other runtime.
 */
const MAX_LISTED = 10;

export function selectPlatform(index: ImageIndex, want: Platform, what: string): Descriptor {
  const candidates = index.manifests.filter(
    (m) =>
      m.platform &&
      m.platform.os === want.os &&
      m.platform.architecture === want.architecture &&
      (m.mediaType === MediaType.OciManifest ||
        m.mediaType === MediaType.DockerManifest ||
        m.mediaType === MediaType.OciIndex ||
        m.mediaType === MediaType.DockerList),
  );
  const exact = candidates.find((m) => (m.platform!.variant ?? '') === (want.variant ?? ''));
  const loose = candidates.find((m) => m.platform!.variant === undefined || (want.architecture === 'arm64' && m.platform!.variant === 'v8'));
  const pick = exact ?? loose;
  if (!pick) {
    // Strings from the registry: the first MAX_LISTED platforms, each clipped.
    const listed = index.manifests
      .slice(0, MAX_LISTED)
      .map((m) => (m.platform ? clip([m.platform.os, m.platform.architecture, m.platform.variant].filter(Boolean).join('/')) : 'unknown'));
    const more = index.manifests.length - listed.length;
    const offered = listed.join(', ') + (more > 0 ? ` and ${more} more` : '');
    const wanted = [want.os, want.architecture, want.variant].filter(Boolean).join('/');
    throw new BerthError('NotFound', `${what}: no image for this node's platform ${wanted} (the index offers: ${offered || 'nothing'})`);
  }
  return pick;
}

/** The chain IDs of a layer stack: chain(0) = diff(0); chain(n) = sha256(chain(n-1) + " " + diff(n)). */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) out.push(out.length === 0 ? d : sha256Digest(`${out[out.length - 1]} ${d}`));
  return out;
}
