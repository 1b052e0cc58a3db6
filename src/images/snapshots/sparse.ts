/**
 * Sparse tar members: files whose holes the archive leaves out. Real images carry them
 * (a preallocated database file), in the GNU formats: the old GNU header (type 'S', with
 * its map in the header and in extension blocks after it) and the PAX formats 0.0
 * (repeated GNU.sparse.offset/numbytes records), 0.1 (GNU.sparse.map) and 1.0 (the map in
 * decimal lines at the start of the data, padded to a block).
 *
 * A sparse member is written sparse: the file is truncated to its real size and only the
 * data segments are written, at their offsets, so holes stay holes (SEEK_HOLE finds them)
 * and a 2 GiB file of a few KB of data costs a few KB of disk (sparse-writer.ts). The map is checked first:
 * segments in order, not overlapping, inside the real size, and adding up to exactly the
 * data the archive stores.
 */

/** A malformed sparse header or map (the unpacker reports it as corrupt data). */
export class SparseError extends Error {}

/** A sparse member as its headers describe it. */
export interface SparseMember {
  format: 'gnu' | '0.0' | '0.1' | '1.0';
  /** The file's size with its holes. */
  realSize: number;
  /** [offset, length] of each data segment; for 1.0 it is read from the data. */
  map: Array<[number, number]> | undefined;
  /** The real name (GNU.sparse.name), when the header carries a made-up one. */
  name: string | undefined;
}

/** Most segments one member may have (GNU tar writes one per data run). */
export const MAX_SPARSE_SEGMENTS = 1_000_000;
/** A 1.0 map larger than this is refused. */

/** A decimal number of a sparse header, checked. */
export function sparseNumber(text: string | undefined, what: string): number {
  if (text === undefined || !/^[0-9]{1,16}$/.test(text)) throw new SparseError(`sparse file: ${what} is not a decimal number`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new SparseError(`sparse file: ${what} is too large`);
  return n;
}

/** Checks a map against the real size and the stored data size. */
export function checkMap(map: Array<[number, number]>, realSize: number, stored: number): void {
  if (map.length > MAX_SPARSE_SEGMENTS) throw new SparseError(`sparse file: more than ${MAX_SPARSE_SEGMENTS} segments`);
  let end = 0;
  let sum = 0;
  for (const [off, len] of map) {
    if (off < end) throw new SparseError('sparse file: segments overlap or are out of order');
    if (off + len > realSize) throw new SparseError(`sparse file: a segment ends at ${off + len}, past the real size ${realSize}`);
    end = off + len;
    sum += len;
  }
  if (sum !== stored) throw new SparseError(`sparse file: the map describes ${sum} bytes of data, the archive stores ${stored}`);
}

/** Parses a 1.0 map ("<count>\n" then "<offset>\n<length>\n" per segment), or undefined when more text is needed. */
export function parseMapText(buf: Buffer): { map: Array<[number, number]>; length: number } | undefined {
  const numbers: number[] = [];
  let pos = 0;
  let count = -1;
  while (count < 0 || numbers.length < count * 2) {
    const nl = buf.indexOf(0x0a, pos);
    if (nl < 0) {
      if (buf.length - pos > 20) throw new SparseError('sparse file: a 1.0 map number is not decimal');
      return undefined;
    }
    const n = sparseNumber(buf.toString('latin1', pos, nl), 'a 1.0 map entry');
    pos = nl + 1;
    if (count < 0) {
      if (n > MAX_SPARSE_SEGMENTS) throw new SparseError(`sparse file: more than ${MAX_SPARSE_SEGMENTS} segments`);
      count = n;
    } else numbers.push(n);
  }
  const map: Array<[number, number]> = [];
  for (let i = 0; i < numbers.length; i += 2) map.push([numbers[i]!, numbers[i + 1]!]);
  return { map, length: pos };
}

/** The sparse member a PAX header's GNU.sparse.* records describe (undefined when none). */
export function paxSparse(records: Map<string, string[]>): SparseMember | undefined {
  const one = (k: string): string | undefined => records.get(k)?.at(-1);
  if (![...records.keys()].some((k) => k.startsWith('GNU.sparse.'))) return undefined;
  const name = one('GNU.sparse.name');
  if (one('GNU.sparse.major') !== undefined || one('GNU.sparse.minor') !== undefined) {
    if (one('GNU.sparse.major') !== '1' || one('GNU.sparse.minor') !== '0') {
      throw new SparseError(`sparse file: unknown PAX sparse format ${one('GNU.sparse.major')}.${one('GNU.sparse.minor')}`);
    }
    return { format: '1.0', realSize: sparseNumber(one('GNU.sparse.realsize'), 'GNU.sparse.realsize'), map: undefined, name };
  }
  const realSize = sparseNumber(one('GNU.sparse.size') ?? one('GNU.sparse.realsize'), 'GNU.sparse.size');
  const numblocks = sparseNumber(one('GNU.sparse.numblocks'), 'GNU.sparse.numblocks');
  let flat: number[];
  let format: SparseMember['format'];
  if (one('GNU.sparse.map') !== undefined) {
    format = '0.1';
    const text = one('GNU.sparse.map')!;
    flat = text === '' ? [] : text.split(',').map((x) => sparseNumber(x, 'GNU.sparse.map'));
  } else {
    format = '0.0';
    const offsets = records.get('GNU.sparse.offset') ?? [];
    const lengths = records.get('GNU.sparse.numbytes') ?? [];
    if (offsets.length !== lengths.length) throw new SparseError('sparse file: GNU.sparse.offset and GNU.sparse.numbytes do not pair up');
    flat = offsets.flatMap((o, i) => [sparseNumber(o, 'GNU.sparse.offset'), sparseNumber(lengths[i], 'GNU.sparse.numbytes')]);
  }
  if (flat.length % 2 !== 0 || flat.length / 2 !== numblocks)
    throw new SparseError(`sparse file: the map does not have GNU.sparse.numblocks (${numblocks}) segments`);
  const map: Array<[number, number]> = [];
  for (let i = 0; i < flat.length; i += 2) map.push([flat[i]!, flat[i + 1]!]);
  return { format, realSize, map, name };
}
