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
 *
 * Two readers of one stream are a smuggling vector if they frame it differently (one
 * skips as data what the other reads as a header). So the scanner also reads each
 * entry's name, type and size as tar-stream does, and the unpacker refuses the layer
 * when tar-stream's header disagrees ({@link PaxXattrScanner.takeEntry}). Inputs on which
 * the two walks are known to differ are refused outright: the old GNU long-name header
 * 'N', and a global PAX header that sets an entry's path, link target, size or sparse map.
 *
 * Extended attributes are bounded as Linux bounds them: a value of at most 64 KiB
 * (XATTR_SIZE_MAX), a name of at most 255 bytes (XATTR_NAME_MAX), and at most
 * {@link MAX_XATTRS_PER_ENTRY} per entry; a larger one refuses the layer, and its value
 * is never copied.
 */
import { paxSparse, SparseError, sparseNumber, type SparseMember } from './sparse.js';

const BLOCK = 512;
/** As tar-stream: a longer PAX or GNU long-name header is refused. */
const MAX_LONG_HEADER = 4 * 1024 * 1024;
/** The PAX record prefix of extended attributes (libarchive, GNU tar). */
export const XATTR_PAX_PREFIX = 'SCHILY.xattr.';

/** Largest xattr value Linux stores (XATTR_SIZE_MAX). */
export const MAX_XATTR_VALUE = 64 * 1024;
/** Longest xattr name Linux stores (XATTR_NAME_MAX), in bytes. */
const MAX_XATTR_NAME = 255;
/** Most xattrs one entry may carry (real images carry a few: capabilities, SELinux labels). */
export const MAX_XATTRS_PER_ENTRY = 128;
/** PAX keys a global header may not set: they change every later entry's identity or framing. */
const PER_ENTRY_KEYS = new Set(['path', 'linkpath', 'size']);

/** Raw xattr records by PAX key (`SCHILY.xattr.<name>`). */
export type RawXattrs = Map<string, Buffer>;

/** What tar-stream's header says of an entry, for {@link PaxXattrScanner.takeEntry}. */
export interface EntryHeader {
  name: string;
  type: string | null;
  size: number;
}

/** What the scanner read of one entry. */
interface ScannedEntry extends EntryHeader {
  xattrs: RawXattrs | undefined;
  sparse: SparseMember | undefined;
}

/** The records of one PAX header the scanner uses. */
interface PaxRecords {
  xattrs: RawXattrs;
  size: string | undefined;
  path: string | undefined;
  sparse: Map<string, string[]>;
  /** Why the entry is refused (an xattr beyond Linux's limits), without its name. */
  refusal: string | undefined;
}

export class PaxXattrScanner {
  private readonly pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes of entry data (and padding) still to skip. */
  private skip = 0;
  /** The long header being read: its type and size. */
  private long: { type: LongHeader; size: number; peek: PaxPeek | undefined } | undefined;
  private global: RawXattrs | undefined;
  private local: PaxRecords | undefined;
  /** The name of a GNU long-name header ('L') for the next entry. */
  private longName: string | undefined;
  /** Entries seen so far (headers other than long headers). */
  private entries = 0;
  private readonly byEntry = new Map<number, ScannedEntry>();
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
        if (this.pendingBytes < padded) {
          this.long.peek?.check(this.pending, this.pendingBytes);
          return out;
        }
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

  /**
   * What the scanner read of entry `n` (1-based, in stream order; once): its raw xattr
   * records and sparse map. Throws when tar-stream's `header` of that entry disagrees
   * with the scanner's walk on its name, type or size.
   */
  takeEntry(n: number, header: EntryHeader): { xattrs: RawXattrs | undefined; sparse: SparseMember | undefined } {
    const x = this.byEntry.get(n);
    this.byEntry.delete(n);
    if (!x || x.name !== header.name || x.type !== header.type || x.size !== header.size) {
      const theirs = describe(header);
      const ours = x ? describe(x) : 'no such entry';
      throw new Error(`the tar parser reads entry ${n} as ${theirs}, berth's header scanner as ${ours}: the two readers of the stream disagree`);
    }
    return { xattrs: x.xattrs, sparse: x.sparse };
  }

  private onHeader(block: Buffer): Buffer {
    if (checksum(block) === 8 * 32) return block; // an all-zero block
    const flag = block[156];
    const size = headerNumber(block, 124, 12);
    const long = LONG_HEADERS.get(flag as number);
    if (long) {
      if (!(size >= 0) || size > MAX_LONG_HEADER) throw new Error('tar long header exceeds the maximum size');
      this.long = { type: long, size, peek: long === 'pax' || long === 'global' ? new PaxPeek(size) : undefined };
      return block;
    }
    if (flag === 0x4e /* N */) {
      // tar-stream reads it as a long name; GNU tar as an entry with a rename script.
      throw new Error("an old GNU long-name header (type 'N') is not supported: tar readers disagree on its framing");
    }
    this.entries++;
    const local = this.local;
    this.local = undefined;
    const longName = this.longName;
    this.longName = undefined;
    // The name as tar-stream reads it: the header's (with the ustar prefix), a GNU long name, a PAX path.
    const name = local?.path || longName || nameOf(block);
    if (local?.refusal) throw new Error(`entry ${quoted(name)}: ${local.refusal}`);
    const xattrs = local?.xattrs;
    if (xattrs && xattrs.size > MAX_XATTRS_PER_ENTRY) {
      throw new Error(`entry ${quoted(name)} has ${xattrs.size} extended attributes, more than ${MAX_XATTRS_PER_ENTRY}`);
    }
    const dataSize = local?.size ? Number(local.size) : size;
    if (!(dataSize >= 0)) throw new Error(`entry ${quoted(name)} has an invalid size`);
    const sparse = local ? paxSparse(local.sparse) : undefined;
    const entry: ScannedEntry = {
      name,
      // The scanner frames an 'S' header as a regular file's data (tar-stream sees it rewritten so).
      type: flag === 0x53 /* S */ ? 'file' : typeOf(flag as number),
      size: dataSize,
      xattrs: xattrs && xattrs.size > 0 ? xattrs : undefined,
      sparse,
    };
    this.byEntry.set(this.entries, entry);
    if (flag === 0x53 /* S */) return this.onGnuSparse(block, dataSize, entry);
    if (entry.type === 'directory' || dataSize === 0) return block;
    this.skip = dataSize + padding(dataSize);
    return block;
  }

  /**
   * An old GNU sparse header: up to 4 segments in the header (offset 386, 24 bytes each),
   * a flag for extension blocks (482), the real size (483). Handed on as a regular file.
   */
  private onGnuSparse(block: Buffer, dataSize: number, entry: ScannedEntry): Buffer {
    // The rewritten header gets a new checksum: a corrupt one must not be laundered.
    if (checksum(block) !== headerNumber(block, 148, 8)) throw new Error(`entry ${quoted(entry.name)}: invalid tar header checksum`);
    const member: SparseMember = { format: 'gnu', realSize: numberField(block, 483, 12, 'the real size'), map: [], name: undefined };
    readSegments(block, 386, 4, member);
    const out = Buffer.from(block);
    out[156] = 0x30;
    out.fill(0x20, 148, 156);
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += out[i] as number;
    out.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    entry.sparse = member;
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

  private onLongHeader(type: LongHeader, body: Buffer): void {
    if (type === 'longlink') return;
    if (type === 'longname') {
      const nul = body.indexOf(0);
      this.longName = body.toString('utf8', 0, nul < 0 ? body.length : nul);
      return;
    }
    const records = paxRecords(body, type === 'global');
    if (type === 'global') {
      if (records.refusal) throw new Error(`the global PAX header: ${records.refusal}`);
      this.global = records.xattrs;
      return;
    }
    // As tar-stream: a global header's records apply to entries that have a PAX header of their own.
    if (this.global) records.xattrs = new Map([...this.global, ...records.xattrs]);
    this.local = records;
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

/**
 * Looks at the records of a PAX header while it is still arriving, so that an xattr
 * value beyond Linux's limit is refused before the header (up to 4 MiB) is buffered
 * whole. Only a record too long to be anything but such a value is read past its length
 * field; anything malformed is left to paxRecords, which reads the whole header.
 */
class PaxPeek {
  /** The start of the next record, from the start of the header. */
  private pos = 0;
  /** The pending chunk holding `pos`, and where that chunk starts. */
  private chunk = 0;
  private chunkStart = 0;
  private done = false;

  constructor(private readonly size: number) {}

  /** Checks the records that have arrived: `pending` holds the header's bytes from its start. */
  check(pending: readonly Buffer[], available: number): void {
    const end = Math.min(available, this.size);
    while (!this.done && this.pos < end) {
      const head = this.bytes(pending, end, 10);
      const space = head.indexOf(0x20);
      if (space < 0) {
        if (head.length < 10 && end < this.size) return; // the length field is still arriving
        this.done = true;
        return;
      }
      const lenText = head.toString('latin1', 0, space);
      if (!/^[0-9]{1,9}$/.test(lenText) || Number(lenText) <= space + 1) {
        this.done = true;
        return;
      }
      const len = Number(lenText);
      if (len > space + 1 + XATTR_PAX_PREFIX.length + MAX_XATTR_NAME + 2 + MAX_XATTR_VALUE) {
        const want = space + 1 + XATTR_PAX_PREFIX.length + MAX_XATTR_NAME + 1;
        const window = this.bytes(pending, end, want);
        if (window.length < want && end < this.size) return; // the key is still arriving
        const key = window.subarray(space + 1);
        if (key.subarray(0, XATTR_PAX_PREFIX.length).toString('latin1') === XATTR_PAX_PREFIX) {
          const eq = key.indexOf(0x3d);
          if (eq < 0) throw new Error(`a PAX header has an extended attribute name longer than the ${MAX_XATTR_NAME} bytes Linux allows (XATTR_NAME_MAX)`);
          const name = key.toString('utf8', XATTR_PAX_PREFIX.length, eq);
          const valueBytes = len - (space + 1) - (eq + 1) - 1;
          throw new Error(
            `a PAX header's extended attribute ${JSON.stringify(name)} has a ${valueBytes}-byte value, more than the ${MAX_XATTR_VALUE} bytes Linux allows (XATTR_SIZE_MAX)`,
          );
        }
      }
      this.pos += len;
    }
  }

  /** Up to `n` bytes from `pos`, no further than `end`. */
  private bytes(pending: readonly Buffer[], end: number, n: number): Buffer {
    while (this.pos >= this.chunkStart + (pending[this.chunk] as Buffer).length) {
      this.chunkStart += (pending[this.chunk] as Buffer).length;
      this.chunk++;
    }
    const want = Math.min(n, end - this.pos);
    const first = pending[this.chunk] as Buffer;
    const at = this.pos - this.chunkStart;
    if (at + want <= first.length) return first.subarray(at, at + want);
    const out = Buffer.allocUnsafe(want);
    let filled = first.copy(out, 0, at);
    for (let i = this.chunk + 1; filled < want; i++) filled += (pending[i] as Buffer).copy(out, filled, 0, want - filled);
    return out;
  }
}

type LongHeader = 'pax' | 'global' | 'longname' | 'longlink';
/** The long headers by type flag, as tar-stream reads them ('N' aside, refused). */
const LONG_HEADERS = new Map<number, LongHeader>([
  [0x78 /* x */, 'pax'],
  [0x67 /* g */, 'global'],
  [0x4c /* L */, 'longname'],
  [0x4b /* K */, 'longlink'],
]);
/** tar-stream's entry types by type flag, '0' to '7' (NUL is '0'). */
const TYPES = ['file', 'link', 'symlink', 'character-device', 'block-device', 'directory', 'fifo', 'contiguous-file'];

/**
 * An entry's type as tar-stream reads it from its type flag. Unlike old tars, tar-stream
 * never reads a regular file whose name ends in '/' as a directory: it reads its size
 * as data, and so must the scanner.
 */
function typeOf(flag: number): string | null {
  return TYPES[flag === 0 ? 0 : flag - 0x30] ?? null;
}

/** A NUL-terminated UTF-8 field. */
function field(block: Buffer, offset: number, length: number): string {
  const nul = block.subarray(offset, offset + length).indexOf(0);
  return block.toString('utf8', offset, nul < 0 ? offset + length : offset + nul);
}

/** The header's name, with its prefix when it is a POSIX ustar header ("ustar\0"), as tar-stream reads it. */
function nameOf(block: Buffer): string {
  const name = field(block, 0, 100);
  if (block[345] === 0 || block.toString('latin1', 257, 263) !== 'ustar\0') return name;
  return `${field(block, 345, 155)}/${name}`;
}

/** A name for a message: quoted, and cut short (a PAX path may be megabytes long). */
function quoted(name: string): string {
  return name.length > 256 ? `${JSON.stringify(name.slice(0, 256))}…` : JSON.stringify(name);
}

function describe(e: EntryHeader): string {
  return `${quoted(e.name)} (${e.type ?? 'unknown type'}, ${e.size} bytes)`;
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

/** The header checksum as tar computes it: the sum of its bytes, the checksum field read as spaces. */
function checksum(block: Buffer): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : (block[i] as number);
  return sum;
}

/**
 * A number field (the size, the checksum) as tar-stream reads it: octal (leading spaces
 * and NULs allowed), or base-256 when its first byte has the high bit (NaN if negative).
 */
function headerNumber(block: Buffer, offset: number, length: number): number {
  const field = block.subarray(offset, offset + length);
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

/**
 * Parses PAX records ("<len> <key>=<value>\n", POSIX pax format) strictly: the xattr values
 * as bytes, the size and path records, the sparse ones. A length that is not decimal
 * digits, that runs past the header or does not end on the record's newline, a record
 * without '=', bytes after the last record other than NUL padding, a size that is not a
 * decimal number, or (in a `global` header) a record that sets an entry's path, link
 * target, size or sparse map: the header is refused (the layer is corrupt). An xattr
 * beyond Linux's limits is not copied, and reported as `refusal`.
 */
function paxRecords(buf: Buffer, global: boolean): PaxRecords {
  const out: PaxRecords = { xattrs: new Map(), size: undefined, path: undefined, sparse: new Map(), refusal: undefined };
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
    if (global && (PER_ENTRY_KEYS.has(key) || key.startsWith('GNU.sparse.'))) {
      throw new Error(`a global PAX header sets ${key}, which would apply to every later entry (tar readers disagree on it)`);
    }
    if (key.startsWith(XATTR_PAX_PREFIX)) {
      const name = key.slice(XATTR_PAX_PREFIX.length);
      const valueBytes = record.length - eq - 1;
      if (valueBytes > MAX_XATTR_VALUE) {
        out.refusal ??= `the extended attribute ${JSON.stringify(name)} has a ${valueBytes}-byte value, more than the ${MAX_XATTR_VALUE} bytes Linux allows (XATTR_SIZE_MAX)`;
      } else if (Buffer.byteLength(name) > MAX_XATTR_NAME) {
        out.refusal ??= `the extended attribute name ${JSON.stringify(name.slice(0, 64))}… is longer than the ${MAX_XATTR_NAME} bytes Linux allows (XATTR_NAME_MAX)`;
      } else out.xattrs.set(key, Buffer.from(record.subarray(eq + 1)));
    } else if (key === 'size') {
      out.size = record.toString('utf8', eq + 1);
      if (!/^[0-9]{1,16}$/.test(out.size) || !Number.isSafeInteger(Number(out.size))) {
        throw new Error(`malformed PAX record at byte ${pos}: the size ${JSON.stringify(out.size.slice(0, 32))} is not a decimal number`);
      }
    } else if (key === 'path') out.path = record.toString('utf8', eq + 1);
    else if (key.startsWith('GNU.sparse.')) {
      const values = out.sparse.get(key) ?? [];
      values.push(record.toString('utf8', eq + 1));
      out.sparse.set(key, values);
    }
    pos += len;
  }
  return out;
}
