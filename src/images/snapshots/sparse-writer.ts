/**
 * Writing a sparse member (see sparse.ts) into a new file with its holes kept: truncate
 * to the real size, then write each data segment at its offset.
 */
import * as fs from 'node:fs';
import { BerthError, messageOf } from '../../common/errors.js';
import { checkMap, SparseError, SparseMapReader, type SparseMember } from './sparse.js';
import { TarError, type EntryStream } from './tar-entry.js';

const BLOCK = 512;

/**
 * Writes a sparse member's data to `fd` (a new, empty file) with holes kept. `stored`
 * is the entry's data size in the archive (for 1.0 the map's blocks included). Returns
 * the bytes of data written.
 */
async function writeSparseData(fd: number, data: EntryStream, member: SparseMember, stored: number): Promise<number> {
  let map = member.map;
  /** The 1.0 map being read from the data. */
  const mapReader = map ? undefined : new SparseMapReader();
  /** Bytes of the 1.0 map's block padding still to skip. */
  let skipPad = 0;
  let seg = 0;
  let segDone = 0;
  let written = 0;
  const setMap = (m: Array<[number, number]>, dataBytes: number): void => {
    checkMap(m, member.realSize, dataBytes);
    map = m;
    fs.ftruncateSync(fd, member.realSize);
  };
  if (map) setMap(map, stored);
  try {
    for await (const raw of data) {
      let chunk = raw as Buffer;
      if (!map) {
        const parsed = mapReader!.push(chunk);
        if (!parsed) continue;
        const mapBlocks = Math.ceil(mapReader!.length / BLOCK) * BLOCK;
        setMap(parsed.map, stored - mapBlocks);
        chunk = parsed.rest;
        skipPad = mapBlocks - mapReader!.length;
      }
      if (skipPad > 0) {
        const n = Math.min(skipPad, chunk.length);
        skipPad -= n;
        chunk = chunk.subarray(n);
      }
      const segments = map as Array<[number, number]>;
      while (chunk.length > 0) {
        const segment = segments[seg];
        if (!segment) throw new TarError('sparse file: more data than its map describes');
        const n = Math.min(segment[1] - segDone, chunk.length);
        let off = 0;
        while (off < n) off += fs.writeSync(fd, chunk, off, n - off, segment[0] + segDone + off);
        segDone += n;
        written += n;
        chunk = chunk.subarray(n);
        if (segDone === segment[1]) {
          seg++;
          segDone = 0;
        }
      }
      // Zero-length segments (GNU tar ends a map with one) need no data.
      while (segments[seg] && segments[seg]![1] === 0) seg++;
    }
  } catch (err) {
    if (err instanceof TarError || err instanceof BerthError || err instanceof SparseError) throw err;
    if (err instanceof Error && 'code' in err) throw err;
    throw new TarError(messageOf(err));
  }
  const segments: Array<[number, number]> | undefined = map;
  if (!segments) throw new TarError('sparse file: the data ends inside its 1.0 map');
  while (segments[seg] && segments[seg]![1] === 0) seg++;
  if (seg < segments.length) throw new TarError('sparse file: the data ends before its map is filled');
  return written;
}

/** As writeSparseData, with a malformed map reported as a corrupt tar stream. */
export async function writeSparse(fd: number, data: EntryStream, member: SparseMember, stored: number): Promise<number> {
  try {
    return await writeSparseData(fd, data, member, stored);
  } catch (err) {
    throw err instanceof SparseError ? new TarError(err.message) : err;
  }
}
