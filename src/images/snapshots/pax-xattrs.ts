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
 */

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
  private local: { xattrs: RawXattrs; size: string | undefined } | undefined;
  /** Entries seen so far (headers other than long headers). */
  private entries = 0;
  private readonly byEntry = new Map<number, RawXattrs>();

  /** Feeds the next chunk of the uncompressed tar stream. Throws on a header tar-stream also refuses. */
  push(chunk: Buffer): void {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    for (;;) {
      if (this.skip > 0) {
        if (this.pendingBytes === 0) return;
        const n = Math.min(this.skip, this.pendingBytes);
        this.drop(n);
        this.skip -= n;
        continue;
      }
      if (this.long) {
        const padded = this.long.size + padding(this.long.size);
        if (this.pendingBytes < padded) return;
        const body = this.take(padded).subarray(0, this.long.size);
        this.onLongHeader(this.long.type, body);
        this.long = undefined;
        continue;
      }
      if (this.pendingBytes < BLOCK) return;
      this.onHeader(this.take(BLOCK));
    }
  }

  /** The raw xattr records of entry `n` (1-based, in stream order), once; undefined when it had none. */
  takeEntry(n: number): RawXattrs | undefined {
    const x = this.byEntry.get(n);
    this.byEntry.delete(n);
    return x;
  }

  private onHeader(block: Buffer): void {
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : (block[i] as number);
    if (sum === 8 * 32) return; // an all-zero block
    const flag = block[156];
    const size = headerSize(block);
    if (flag === 0x78 /* x */ || flag === 0x67 /* g */ || flag === 0x4c /* L */ || flag === 0x4b /* K */) {
      if (!(size >= 0) || size > MAX_LONG_HEADER) throw new Error('tar long header exceeds the maximum size');
      this.long = { type: flag === 0x78 ? 'pax' : flag === 0x67 ? 'global' : 'gnu', size };
      return;
    }
    this.entries++;
    const local = this.local;
    this.local = undefined;
    const xattrs = local?.xattrs;
    if (xattrs && xattrs.size > 0) this.byEntry.set(this.entries, xattrs);
    const paxSize = local ? (local.size ?? this.globalSize) : undefined;
    const dataSize = paxSize ? parseInt(paxSize, 10) : size;
    if (isDirectory(block) || !(dataSize > 0)) return;
    this.skip = dataSize + padding(dataSize);
  }

  private onLongHeader(type: 'pax' | 'global' | 'gnu', body: Buffer): void {
    if (type === 'gnu') return;
    const { xattrs, size } = paxRecords(body);
    if (type === 'global') {
      this.global = xattrs;
      this.globalSize = size;
      return;
    }
    this.local = { xattrs: new Map([...(this.global ?? []), ...xattrs]), size };
  }

  private drop(n: number): void {
    let left = n;
    while (left > 0) {
      const head = this.pending[0] as Buffer;
      if (head.length <= left) {
        this.pending.shift();
        left -= head.length;
      } else {
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
function paxRecords(buf: Buffer): { xattrs: RawXattrs; size: string | undefined } {
  const xattrs: RawXattrs = new Map();
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
    pos += len;
  }
  return { xattrs, size };
}
