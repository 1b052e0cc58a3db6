/**
 * What the unpacker reads off one tar entry, as pure functions: the overlay role of its
 * name (entry, whiteout, opaque marker, AUFS bookkeeping), its owner, mode and times,
 * its extended attributes, and the errors every step of an unpack raises.
 */
import type { Header } from 'tar-stream';
import { BerthError, clip, errnoOf, messageOf } from '../../common/errors.js';
import { XATTR_PAX_PREFIX, type RawXattrs } from './pax-xattrs.js';

/** A whiteout `.wh.<name>` deletes `<name>` of a lower layer. */
export const WHITEOUT_PREFIX = '.wh.';
/** Names of AUFS bookkeeping (skipped), and of the opaque marker. */
export const WHITEOUT_META_PREFIX = '.wh..wh.';
/** `.wh..wh..opq` in a directory hides the whole lower directory. */
export const OPAQUE_MARKER = '.wh..wh..opq';

/** Access and modification times, in seconds. */
export type Times = readonly [atime: number, mtime: number];
/** Extended attributes of one path, by name. */
export type Xattrs = Array<readonly [name: string, value: Buffer]>;
/** The entry stream tar-stream hands out (a streamx Readable). */
export type EntryStream = AsyncIterable<Buffer> & {
  on(event: string, fn: (arg?: unknown) => void): unknown;
  pause(): unknown;
  resume(): unknown;
};

/**
 * The deepest and the longest path a layer entry (or a hardlink's target) may have. Real
 * images stay far below both; a hostile layer could otherwise make every entry create
 * hundreds of parent directories, or paths no syscall takes (PATH_MAX is 4096).
 */
export const MAX_PATH_DEPTH = 256;
export const MAX_PATH_BYTES = 4096;

/** Raised by the tar parser; turned into DataLoss. */
export class TarError extends Error {}

/** What a layer entry stands for in overlay terms. */
export function roleOf(parts: readonly string[]): 'entry' | 'whiteout' | 'opaque' | 'ignored' {
  const base = parts[parts.length - 1] ?? '';
  if (!base.startsWith(WHITEOUT_PREFIX)) {
    return parts.some((p) => p.startsWith(WHITEOUT_META_PREFIX)) ? 'ignored' : 'entry';
  }
  if (parts.some((p, i) => i < parts.length - 1 && p.startsWith(WHITEOUT_META_PREFIX))) return 'ignored';
  if (base === OPAQUE_MARKER) return 'opaque';
  return base.startsWith(WHITEOUT_META_PREFIX) ? 'ignored' : 'whiteout';
}

/** Owner, mode, times and data size of an entry. */
export interface Metadata {
  size: number;
  uid: number;
  gid: number;
  mode: number;
  times: Times;
}

/** Owner, mode and times, preferring PAX records (large ids, sub-second times). */
export function metadataOf(header: Header, pax: Record<string, string> | undefined): Metadata {
  const paxInt = (key: string): number | undefined => {
    const v = pax?.[key];
    return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
  };
  const paxTime = (key: string): number | undefined => {
    const v = pax?.[key];
    const t = v === undefined ? NaN : Number(v);
    return Number.isFinite(t) ? t : undefined;
  };
  const mtime = paxTime('mtime') ?? header.mtime.getTime() / 1000;
  return {
    size: header.size,
    uid: paxInt('uid') ?? header.uid,
    gid: paxInt('gid') ?? header.gid,
    mode: header.mode & 0o7777,
    times: [paxTime('atime') ?? mtime, mtime],
  };
}

/**
 * The xattrs of an entry, as the raw bytes of its PAX records (`raw`, from the
 * {@link PaxXattrScanner}), checked against tar-stream's decoded values. Overlay
 * metadata (`trusted.overlay.*`, `user.overlay.*`) is dropped.
 */
export function xattrsOf(header: Header, raw: RawXattrs | undefined, layer: string): Xattrs {
  const pax = header.pax as Record<string, string> | null | undefined;
  if (!pax) return [];
  const out: Xattrs = [];
  for (const key of Object.keys(pax)) {
    if (!key.startsWith(XATTR_PAX_PREFIX)) continue;
    const value = raw?.get(key);
    if (value === undefined || value.toString('utf8') !== pax[key]) {
      throw new BerthError('DataLoss', `layer ${layer}: corrupt tar stream: the PAX record ${key} of ${JSON.stringify(header.name)} reads inconsistently`);
    }
    const name = key.slice(XATTR_PAX_PREFIX.length);
    // The overlay's own metadata must come from berth, never from a layer.
    if (name === '' || name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.')) continue;
    out.push([name, value]);
  }
  return out;
}

/**
 * Splits a tar name into clean components; refuses absolute names and `..` (`what` names
 * it), and paths deeper or longer than {@link MAX_PATH_DEPTH} and {@link MAX_PATH_BYTES}.
 */
export function normalize(name: string, what: string, layer: string): string[] {
  if (name.startsWith('/')) throw unsafe(layer, `${what} has an absolute name and would escape the snapshot`);
  const short = clip(what);
  const bytes = Buffer.byteLength(name);
  if (bytes > MAX_PATH_BYTES) {
    throw new BerthError('ResourceExhausted', `layer ${layer}: ${short} has a path of ${bytes} bytes, over the limit of ${MAX_PATH_BYTES} for one path`);
  }
  const parts: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw unsafe(layer, `${what} would escape the snapshot`);
    parts.push(part);
  }
  if (parts.length > MAX_PATH_DEPTH) {
    throw new BerthError(
      'ResourceExhausted',
      `layer ${layer}: ${short} has a path of ${parts.length} components, over the limit of ${MAX_PATH_DEPTH} for one path`,
    );
  }
  return parts;
}

/** The number of components of a relative path ('' is the root, 0). */
export function depth(rel: string): number {
  return rel === '' ? 0 : rel.split('/').length;
}

/** Unsafe layer content: FailedPrecondition. */
export function unsafe(layer: string, msg: string): BerthError {
  return new BerthError('FailedPrecondition', `layer ${layer}: ${msg}`);
}

/** A failed filesystem call: ResourceExhausted when the disk is full, else Internal. */
export function fsError(layer: string, err: unknown, doing: string): BerthError {
  const code = errnoOf(err);
  const kind = code === 'ENOSPC' || code === 'EDQUOT' ? 'ResourceExhausted' : 'Internal';
  return new BerthError(kind, `layer ${layer}: ${doing}: ${messageOf(err)}`, { cause: err });
}
