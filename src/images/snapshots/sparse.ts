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

/** A 1.0 map's text larger than this is refused. */
export const MAX_MAP_TEXT = 16 * 1024 * 1024;
/** Longest line of a 1.0 map (16 digits); a longer run without a newline is refused. */
const MAX_MAP_LINE = 20;

/**
 * Reads a 1.0 map ("<count>\n" then "<offset>\n<length>\n" per segment) from the data
 * chunks as they arrive. It keeps what it has parsed and the partial line between
 * chunks, so each byte is looked at a constant number of times, whatever the map's size
 * and however the data is chunked.
 */
export class SparseMapReader {
  /** Bytes of map text read so far. */
  length = 0;
  private count = -1;
  private readonly map: Array<[number, number]> = [];
  /** The offset of a segment whose length is still to come. */
  private offset: number | undefined;
  /** The start of a line cut by the end of a chunk. */
  private partial = '';

  /**
   * Feeds the next data chunk: the map and the rest of the chunk after it once the map
   * is complete, else undefined (more text is needed).
   */
  push(chunk: Buffer): { map: Array<[number, number]>; rest: Buffer } | undefined {
    let pos = 0;
    while (!this.complete()) {
      const nl = chunk.indexOf(0x0a, pos);
      if (nl < 0) {
        if (this.partial.length + chunk.length - pos > MAX_MAP_LINE) throw new SparseError('sparse file: a 1.0 map number is not decimal');
        this.partial += chunk.toString('latin1', pos);
        this.consumed(chunk.length - pos);
        return undefined;
      }
      if (this.partial.length + nl - pos > MAX_MAP_LINE) throw new SparseError('sparse file: a 1.0 map number is not decimal');
      const text = this.partial + chunk.toString('latin1', pos, nl);
      this.partial = '';
      this.consumed(nl + 1 - pos);
      pos = nl + 1;
      this.onNumber(sparseNumber(text, 'a 1.0 map entry'));
    }
    return { map: this.map, rest: chunk.subarray(pos) };
  }

  private complete(): boolean {
    return this.count >= 0 && this.offset === undefined && this.map.length === this.count;
  }

  private consumed(bytes: number): void {
    this.length += bytes;
    if (this.length > MAX_MAP_TEXT) throw new SparseError(`sparse file: the 1.0 map is larger than ${MAX_MAP_TEXT} bytes`);
  }

  private onNumber(n: number): void {
    if (this.count < 0) {
      if (n > MAX_SPARSE_SEGMENTS) throw new SparseError(`sparse file: more than ${MAX_SPARSE_SEGMENTS} segments`);
      this.count = n;
    } else if (this.offset === undefined) this.offset = n;
    else {
      this.map.push([this.offset, n]);
      this.offset = undefined;
    }
  }
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
