/**
 * The raw bytes of the `SCHILY.xattr.*` PAX records of a tar stream.
 *
 * tar-stream hands out PAX records decoded as UTF-8 (`header.pax`), which mangles
 * binary xattr values such as `security.capability`. This scanner reads the same
 * uncompressed bytes just before tar-stream does, walks the 512-byte blocks the way
 * tar-stream does (headers, GNU long names, PAX headers local and global, data padded
 * to a block; a directory's size is not skipped), and keeps, for each entry that
 * carries xattr records, their values as bytes. The unpacker takes them by entry number
 * and checks them against tar-stream's decoded values, so that a disagreement between
 * the two walks is refused as corrupt data rather than applied to the wrong file.
 *
 * The same walk finds sparse members (see sparse.ts), which tar-stream cannot describe:
 * the GNU.sparse.* PAX records (0.0 repeats its keys, which tar-stream's decoded object
 * collapses) and the old GNU 'S' header. The scanner passes the stream on to tar-stream
 * ({@link PaxXattrScanner.push} returns the bytes to hand it) with one change: an 'S'
 * header becomes a regular file's header and its sparse extension blocks are left out,
 * so tar-stream sees the stored data as a plain file's; the unpacker takes the map by
 * entry number.
 */
import { paxSparse, SparseError, sparseNumber, type SparseMember } from './sparse.js';

const BLOCK = 512;
/** As tar-stream: a longer PAX or GNU long-name header is refused. */
const MAX_LONG_HEADER = 4 * 1024 * 1024;
/** The PAX record prefix of extended attributes (libarchive, GNU tar). */
export const XATTR_PAX_PREFIX = 'SCHILY.xattr.';

/** Raw xattr records by PAX key (`SCHILY.xattr.<name>`). */
export type RawXattrs = Map<string, Buffer>;

export class PaxXattrScanner {
  private readonly pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes of entry data (and padding) still to skip. */
  private skip = 0;
  /** The long header being read: its type and size. */
  private long: { type: 'pax' | 'global' | 'gnu'; size: number } | undefined;
  private global: RawXattrs | undefined;
  private globalSize: string | undefined;
  private local: { xattrs: RawXattrs; size: string | undefined; sparse: Map<string, string[]> } | undefined;
  /** Entries seen so far (headers other than long headers). */
  private entries = 0;
  private readonly byEntry = new Map<number, RawXattrs>();
  private readonly sparseByEntry = new Map<number, SparseMember>();
  /** An old GNU sparse header's extension blocks being read: its map so far, and its data size. */
  private gnuExtension: { member: SparseMember; dataSize: number } | undefined;

  /**
   * Feeds the next chunk of the uncompressed tar stream; returns the bytes to hand to
   * tar-stream (see above). Throws on a header tar-stream also refuses, and on a
   * malformed PAX record or sparse map.
   */
  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    for (;;) {
      if (this.skip > 0) {
        if (this.pendingBytes === 0) return out;
        const n = Math.min(this.skip, this.pendingBytes);
        this.drop(n, out);
        this.skip -= n;
        continue;
      }
      if (this.long) {
        const padded = this.long.size + padding(this.long.size);
        if (this.pendingBytes < padded) return out;
        const block = this.take(padded);
        out.push(block);
        this.onLongHeader(this.long.type, block.subarray(0, this.long.size));
        this.long = undefined;
        continue;
      }
      if (this.pendingBytes < BLOCK) return out;
      if (this.gnuExtension) this.onGnuExtension(this.take(BLOCK));
      else out.push(this.onHeader(this.take(BLOCK)));
    }
  }

  /** The bytes still held (an incomplete block at the end of the stream), for tar-stream to judge. */
  flush(): Buffer[] {
    const out = this.pending.splice(0);
    this.pendingBytes = 0;
    return out;
  }

  /** The sparse map of entry `n`, once; undefined when it is not sparse. */
  takeSparse(n: number): SparseMember | undefined {
    const x = this.sparseByEntry.get(n);
    this.sparseByEntry.delete(n);
    return x;
  }

  /** The raw xattr records of entry `n` (1-based, in stream order), once; undefined when it had none. */
  takeEntry(n: number): RawXattrs | undefined {
    const x = this.byEntry.get(n);
    this.byEntry.delete(n);
    return x;
  }

  private onHeader(block: Buffer): Buffer {
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : (block[i] as number);
    if (sum === 8 * 32) return block; // an all-zero block
    const flag = block[156];
    const size = headerSize(block);
    if (flag === 0x78 /* x */ || flag === 0x67 /* g */ || flag === 0x4c /* L */ || flag === 0x4b /* K */) {
      if (!(size >= 0) || size > MAX_LONG_HEADER) throw new Error('tar long header exceeds the maximum size');
      this.long = { type: flag === 0x78 ? 'pax' : flag === 0x67 ? 'global' : 'gnu', size };
      return block;
    }
    this.entries++;
    const local = this.local;
    this.local = undefined;
    const xattrs = local?.xattrs;
    if (xattrs && xattrs.size > 0) this.byEntry.set(this.entries, xattrs);
    const paxSize = local ? (local.size ?? this.globalSize) : undefined;
    const dataSize = paxSize ? parseInt(paxSize, 10) : size;
    const sparse = local ? paxSparse(local.sparse) : undefined;
    if (sparse) this.sparseByEntry.set(this.entries, sparse);
    if (flag === 0x53 /* S */) return this.onGnuSparse(block, dataSize);
    if (isDirectory(block) || !(dataSize > 0)) return block;
    this.skip = dataSize + padding(dataSize);
    return block;
  }

  /**
   * An old GNU sparse header: up to 4 segments in the header (offset 386, 24 bytes each),
   * a flag for extension blocks (482), the real size (483). Handed on as a regular file.
   */
  private onGnuSparse(block: Buffer, dataSize: number): Buffer {
    const member: SparseMember = { format: 'gnu', realSize: numberField(block, 483, 12, 'the real size'), map: [], name: undefined };
    readSegments(block, 386, 4, member);
    const out = Buffer.from(block);
    out[156] = 0x30;
    out.fill(0x20, 148, 156);
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += out[i] as number;
    out.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    this.sparseByEntry.set(this.entries, member);
    if (block[482]) this.gnuExtension = { member, dataSize };
    else this.skip = dataSize + padding(dataSize);
    return out;
  }

  /** An extension block of an old GNU sparse header: 21 segments and a continuation flag (504). */
  private onGnuExtension(block: Buffer): void {
    const ext = this.gnuExtension!;
    readSegments(block, 0, 21, ext.member);
    if (block[504]) return;
    this.gnuExtension = undefined;
    this.skip = ext.dataSize + padding(ext.dataSize);
  }

  private onLongHeader(type: 'pax' | 'global' | 'gnu', body: Buffer): void {
    if (type === 'gnu') return;
    const { xattrs, size, sparse } = paxRecords(body);
    if (type === 'global') {
      this.global = xattrs;
      this.globalSize = size;
      return;
    }
    this.local = { xattrs: new Map([...(this.global ?? []), ...xattrs]), size, sparse };
  }

  /** Moves `n` pending bytes to `out`. */
  private drop(n: number, out: Buffer[]): void {
    let left = n;
    while (left > 0) {
      const head = this.pending[0] as Buffer;
      if (head.length <= left) {
        out.push(head);
        this.pending.shift();
        left -= head.length;
      } else {
        out.push(head.subarray(0, left));
        this.pending[0] = head.subarray(left);
        left = 0;
      }
    }
    this.pendingBytes -= n;
  }

  private take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const head = this.pending[0] as Buffer;
      const part = Math.min(head.length, n - filled);
      head.copy(out, filled, 0, part);
      filled += part;
      if (part === head.length) this.pending.shift();
      else this.pending[0] = head.subarray(part);
    }
    this.pendingBytes -= n;
    return out;
  }
}

/** An octal (or base-256) number field of an old GNU sparse header. */
function numberField(block: Buffer, offset: number, length: number, what: string): number {
  const field = block.subarray(offset, offset + length);
  if ((field[0] as number) & 0x80) {
    let n = 0;
    for (let i = 1; i < field.length; i++) n = n * 256 + (field[i] as number);
    if (field[0] !== 0x80 || !Number.isSafeInteger(n)) throw new SparseError(`sparse file: ${what} is out of range`);
    return n;
  }
  const text = field
    .toString('latin1')
    .replace(/[\0 ]+$/, '')
    .replace(/^ +/, '');
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw new SparseError(`sparse file: ${what} is not an octal number`);
  return sparseNumber(String(parseInt(text, 8)), what);
}

/** Reads up to `count` (offset, length) pairs of 12-byte fields; an empty offset field ends the list. */
function readSegments(block: Buffer, at: number, count: number, member: SparseMember): void {
  for (let i = 0; i < count; i++) {
    const o = at + i * 24;
    if (block[o] === 0) return;
    member.map!.push([numberField(block, o, 12, 'a segment offset'), numberField(block, o + 12, 12, 'a segment length')]);
    if (member.map!.length > 1_000_000) throw new SparseError('sparse file: too many segments');
  }
}

function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

/** The size field: octal (leading spaces and NULs allowed), or base-256 when its first byte has the high bit. */
function headerSize(block: Buffer): number {
  const field = block.subarray(124, 136);
  if ((field[0] as number) & 0x80) {
    if (field[0] !== 0x80) return NaN;
    let n = 0;
    for (let i = 1; i < field.length; i++) n = n * 256 + (field[i] as number);
    return n;
  }
  let start = 0;
  while (start < field.length && field[start] === 0x20) start++;
  let end = field.indexOf(0x20, start);
  if (end < 0) end = field.length;
  while (start < end && field[start] === 0) start++;
  return start === end ? 0 : parseInt(field.toString('latin1', start, end), 8);
}

/** A directory by its type flag, or (old tars) a regular file whose header name ends in '/'. */
function isDirectory(block: Buffer): boolean {
  const flag = block[156];
  if (flag === 0x35 /* 5 */) return true;
  if (flag !== 0 && flag !== 0x30) return false;
  const nul = block.indexOf(0);
  const nameEnd = nul < 0 || nul > 100 ? 100 : nul;
  return nameEnd > 0 && block[nameEnd - 1] === 0x2f;
}

/**
 * Parses PAX records ("<len> <key>=<value>\n", POSIX pax format) strictly: the xattr values
 * as bytes, and the size record. A length that is not decimal digits, that runs past the
 * header or does not end on the record's newline, a record without '=', or bytes after
 * the last record other than NUL padding: the header is refused (the layer is corrupt).
 */
function paxRecords(buf: Buffer): { xattrs: RawXattrs; size: string | undefined; sparse: Map<string, string[]> } {
  const xattrs: RawXattrs = new Map();
  const sparse = new Map<string, string[]>();
  let size: string | undefined;
  let pos = 0;
  while (pos < buf.length) {
    if (buf[pos] === 0 && buf.subarray(pos).every((b) => b === 0)) break;
    const space = buf.indexOf(0x20, pos);
    const lenText = space < 0 ? '' : buf.toString('latin1', pos, space);
    if (!/^[0-9]{1,9}$/.test(lenText)) throw new Error(`malformed PAX record at byte ${pos}: the length field is not a decimal number`);
    const len = Number(lenText);
    if (len <= space - pos + 1 || pos + len > buf.length) {
      throw new Error(`malformed PAX record at byte ${pos}: its length ${len} does not fit the ${buf.length}-byte header`);
    }
    if (buf[pos + len - 1] !== 0x0a) throw new Error(`malformed PAX record at byte ${pos}: length ${len} does not end on the record's newline`);
    const record = buf.subarray(space + 1, pos + len - 1); // without the trailing newline
    const eq = record.indexOf(0x3d);
    if (eq <= 0) throw new Error(`malformed PAX record at byte ${pos}: no "key=value"`);
    const key = record.toString('utf8', 0, eq);
    if (key.startsWith(XATTR_PAX_PREFIX)) xattrs.set(key, Buffer.from(record.subarray(eq + 1)));
    else if (key === 'size') size = record.toString('utf8', eq + 1);
    else if (key.startsWith('GNU.sparse.')) {
      const values = sparse.get(key) ?? [];
      values.push(record.toString('utf8', eq + 1));
      sparse.set(key, values);
    }
    pos += len;
  }
  return { xattrs, size, sparse };
}
