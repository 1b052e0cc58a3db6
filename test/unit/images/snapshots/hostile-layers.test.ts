/**
 * Hostile layers the unpacker must refuse or tame: malformed PAX records (refused as
 * corrupt data naming the layer), and sparse members in every GNU format (written with
 * their holes, never as gigabytes of zeroes). Layers are built here, byte by byte where
 * tar-stream would not write them, or by GNU tar from a real sparse file.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { isKind } from '../../../../src/common/errors.js';
import { PaxXattrScanner } from '../../../../src/images/snapshots/pax-xattrs.js';
import { MAX_PATH_BYTES, MAX_PATH_DEPTH } from '../../../../src/images/snapshots/tar-entry.js';
import { unpackLayer } from '../../../../src/images/snapshots/unpack.js';

const LAYER = `sha256:${'cd'.repeat(32)}`;
const BLOCK = 512;

/** A ustar header block with a correct checksum. */
export function ustarHeader(name: string, typeflag: string, size: number, extra?: (b: Buffer) => void): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(name, 0, 100, 'utf8');
  b.write('0000644\0', 100, 'latin1');
  b.write('0000000\0', 108, 'latin1');
  b.write('0000000\0', 116, 'latin1');
  b.write(size.toString(8).padStart(11, '0') + '\0', 124, 'latin1');
  b.write('14000000000\0', 136, 'latin1');
  b[156] = typeflag.charCodeAt(0);
  b.write('ustar\0', 257, 'latin1');
  b.write('00', 263, 'latin1');
  extra?.(b);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i] as number;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return b;
}

/** Data padded to whole blocks. */
export function padded(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((BLOCK - (data.length % BLOCK)) % BLOCK)]);
}

/** PAX records with correct lengths. */
function paxText(records: Array<[string, string]>): string {
  return records
    .map(([k, v]) => {
      const rest = ` ${k}=${v}\n`;
      let len = rest.length + 1;
      while (String(len).length + rest.length !== len) len++;
      return `${len}${rest}`;
    })
    .join('');
}

/** A tar stream of a PAX header with `records` (raw bytes) before a small regular file. */
function withPax(records: string, content = Buffer.from('hello\n')): Buffer {
  const body = Buffer.from(records, 'utf8');
  return Buffer.concat([
    ustarHeader('PaxHeaders/f', 'x', body.length),
    padded(body),
    ustarHeader('f', '0', content.length),
    padded(content),
    Buffer.alloc(2 * BLOCK),
  ]);
}

/** A PAX 1.0 sparse member (map text at the start of its data) with `segments`, as GNU tar writes it. */
function sparse10(name: string, realSize: number, segments: Array<[number, Buffer]>): Buffer {
  let map = `${segments.length}\n`;
  for (const [off, data] of segments) map += `${off}\n${data.length}\n`;
  return withMapText(map, 0, name, realSize, Buffer.concat(segments.map(([, d]) => d)));
}

/** A PAX 1.0 sparse member with the map text `map` (as it is) and `dataBytes` bytes of data 'd' (or `data`). */
function withMapText(map: string, dataBytes: number, name = 'f', realSize = 100, data = Buffer.alloc(dataBytes, 'd')): Buffer {
  const body = Buffer.concat([padded(Buffer.from(map, 'latin1')), data]);
  const records = paxText([
    ['GNU.sparse.major', '1'],
    ['GNU.sparse.minor', '0'],
    ['GNU.sparse.name', name],
    ['GNU.sparse.realsize', String(realSize)],
  ]);
  return Buffer.concat([
    ustarHeader(`PaxHeaders/${name}`, 'x', Buffer.byteLength(records)),
    padded(Buffer.from(records)),
    ustarHeader(`GNUSparseFile.0/${name}`, '0', body.length),
    padded(body),
    Buffer.alloc(2 * BLOCK),
  ]);
}

describe('images: hostile layers', () => {
  let work: string;
  beforeEach(() => (work = fs.mkdtempSync(join(tmpdir(), 'berth-hostile-'))));
  afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

  const unpack = (raw: Buffer) => unpackLayer(Readable.from([raw]), 'none', work, { layer: LAYER, maxBytes: 1 << 30 });

  describe('strict PAX records', () => {
    for (const [what, records, reason] of [
      ['a length one too long', '30 SCHILY.xattr.user.k=value\n', /does not fit/],
      ['a length one too short', '28 SCHILY.xattr.user.k=value\n', /does not end on the record's newline/],
      ['a missing newline', '29 SCHILY.xattr.user.k=value', /does not fit/],
      ['a missing newline within the header', '29 SCHILY.xattr.user.k=valuex', /does not end on the record's newline/],
      ['a non-numeric length', '2x SCHILY.xattr.user.k=value\n', /not a decimal number/],
      ['a negative length', '-29 SCHILY.xattr.user.k=value\n', /not a decimal number/],
      ['a record without key=value', '11 novalue\n', /no "key=value"/],
      ['garbage after the records', '29 SCHILY.xattr.user.k=value\ntrailing', /not a decimal number/],
    ] as const) {
      it(`refuses the layer on ${what} (DataLoss naming the layer), writing nothing`, async () => {
        await assert.rejects(unpack(withPax(records)), (err: unknown) => {
          assert.ok(isKind(err, 'DataLoss'), String(err));
          assert.ok(err.message.startsWith(`layer ${LAYER}: corrupt tar stream: malformed PAX record`), err.message);
          assert.match(err.message, reason);
          return true;
        });
        assert.equal(fs.existsSync(join(work, 'f')), false);
      });
    }

    it('refuses a malformed global PAX header too', () => {
      const body = Buffer.from('99 comment=x\n');
      const raw = Buffer.concat([ustarHeader('GlobalHead', 'g', body.length), padded(body)]);
      assert.throws(() => new PaxXattrScanner().push(raw), /malformed PAX record/);
    });
  });

  describe('sparse members', function () {
    this.timeout(60_000);
    const REAL = 2 * 1024 ** 3;
    /** Six data runs (more than the 4 an old GNU header holds), the last at the very end. */
    const runs: Array<[number, Buffer]> = [
      [0, Buffer.from('head of the file\n')],
      [8192, Buffer.alloc(3000, 'a')],
      [64 << 20, Buffer.alloc(5000, 'b')],
      [1024 ** 3 + 12345, Buffer.from('the middle')],
      [1536 * 1024 ** 2, Buffer.alloc(4096, 'c')],
      [REAL - 100, Buffer.alloc(100, 'z')],
    ];

    /** A real 2 GiB sparse file with the runs above, archived by GNU tar with `args`. */
    function gnuTar(args: string[]): Buffer {
      const src = join(work, 'src');
      fs.mkdirSync(src);
      const fd = fs.openSync(join(src, 'db.img'), 'w');
      fs.ftruncateSync(fd, REAL);
      for (const [off, data] of runs) fs.writeSync(fd, data, 0, data.length, off);
      fs.closeSync(fd);
      const raw = execFileSync('tar', ['-c', '--sparse', ...args, '-C', src, 'db.img'], { maxBuffer: 64 << 20 });
      fs.rmSync(src, { recursive: true });
      return raw;
    }

    for (const [format, args] of [
      ['GNU (old sparse header with extension blocks)', ['--format=gnu']],
      ['PAX 0.0', ['--format=posix', '--sparse-version=0.0']],
      ['PAX 0.1', ['--format=posix', '--sparse-version=0.1']],
      ['PAX 1.0', ['--format=posix', '--sparse-version=1.0']],
    ] as const) {
      it(`writes a ${format} member sparse: 2 GiB in size, a few KB on disk, data at its offsets`, async () => {
        const raw = gnuTar([...args]);
        assert.ok(raw.length < 1 << 20, `the layer is small (${raw.length} bytes)`);
        const target = join(work, 'snapshot');
        fs.mkdirSync(target);
        // The tar bytes are capped at 1 GiB, the real size (holes included) by images.max_layer_bytes.
        const result = await unpackLayer(Readable.from([raw]), 'none', target, { layer: LAYER, maxBytes: 1 << 30, maxLayerBytes: 4 * 1024 ** 3 });
        assert.deepEqual(fs.readdirSync(target), ['db.img'], 'the real name, not GNUSparseFile.*');
        const file = join(target, 'db.img');
        const st = fs.statSync(file);
        assert.equal(st.size, REAL, 'stat size');
        assert.ok(st.blocks * 512 < 256 * 1024, `du: ${st.blocks * 512} bytes on disk`);
        assert.ok(result.fileBytes < 1 << 20, `data written: ${result.fileBytes}`);
        // du agrees (not to the block: ext4 may allocate an extent block after writeback).
        const du = Number(execFileSync('du', ['-B1', file], { encoding: 'utf8' }).split('\t')[0]);
        assert.ok(du < 256 * 1024, `du: ${du} bytes`);
        const fd = fs.openSync(file, 'r');
        try {
          for (const [off, data] of runs) {
            const got = Buffer.alloc(data.length + 16);
            const n = fs.readSync(fd, got, 0, got.length, off - 8 >= 0 ? off - 8 : off);
            const at = off - 8 >= 0 ? 8 : 0;
            assert.deepEqual(got.subarray(at, at + data.length), data, `data at ${off}`);
            if (at === 8)
              assert.ok(
                got.subarray(0, 8).every((b) => b === 0),
                `hole before ${off}`,
              );
            assert.ok(n >= at + data.length);
          }
          const hole = Buffer.alloc(4096, 1);
          fs.readSync(fd, hole, 0, hole.length, 512 << 20);
          assert.ok(
            hole.every((b) => b === 0),
            'a hole reads as zeroes',
          );
        } finally {
          fs.closeSync(fd);
        }
      });
    }

    it('reads a PAX 1.0 map of 200,000 segments arriving in 512-byte chunks, each byte of the map once', async () => {
      const count = 200_000;
      const segments: Array<[number, Buffer]> = [];
      for (let i = 0; i < count; i++) segments.push([i * 2, Buffer.from([i % 251])]);
      const raw = sparse10('many.img', count * 2 + 10, segments);
      const chunks: Buffer[] = [];
      for (let i = 0; i < raw.length; i += BLOCK) chunks.push(raw.subarray(i, i + BLOCK));
      const target = join(work, 'snapshot');
      fs.mkdirSync(target);
      const result = await unpackLayer(Readable.from(chunks), 'none', target, { layer: LAYER, maxBytes: 1 << 30 });
      assert.equal(result.fileBytes, count);
      const got = fs.readFileSync(join(target, 'many.img'));
      assert.equal(got.length, count * 2 + 10);
      for (const i of [0, 1, 250, 251, 99_999, count - 1]) {
        assert.equal(got[i * 2], i % 251, `segment ${i}`);
        assert.equal(got[i * 2 + 1], 0, `the hole after segment ${i}`);
      }
    });

    it('still refuses a 1.0 map out of order, with a bad number or too long a line when it arrives in pieces', async () => {
      const cases: Array<[string, Buffer, RegExp]> = [
        [
          'out of order',
          sparse10('f', 100, [
            [10, Buffer.from('a')],
            [5, Buffer.from('b')],
          ]),
          /out of order/,
        ],
        ['a bad number', withMapText('2\n0\n1\nx\n1\n', 2), /not a decimal number/],
        ['a line of 21 digits', withMapText(`1\n${'1'.repeat(21)}\n1\n`, 1), /not decimal/],
        ['a count over the limit', withMapText('1000001\n', 0), /more than 1000000 segments/],
      ];
      for (const [what, raw, reason] of cases) {
        for (const size of [1, 7, BLOCK, raw.length]) {
          const chunks: Buffer[] = [];
          for (let i = 0; i < raw.length; i += size) chunks.push(raw.subarray(i, i + size));
          await assert.rejects(unpackLayer(Readable.from(chunks), 'none', work, { layer: LAYER, maxBytes: 1 << 30 }), (err: unknown) => {
            assert.ok(isKind(err, 'DataLoss'), `${what}, chunks of ${size}: ${String(err)}`);
            assert.match(err.message, reason, `${what}, chunks of ${size}`);
            return true;
          });
          fs.rmSync(join(work, 'f'), { force: true });
        }
      }
    });

    it('refuses a sparse file whose real size is beyond images.max_layer_bytes (ResourceExhausted), writing nothing', async () => {
      const huge = 2 ** 50;
      for (const raw of [
        sparse10('huge.img', huge, [[huge - 5, Buffer.from('tail\n')]]),
        withPax(
          paxText([
            ['GNU.sparse.size', String(huge)],
            ['GNU.sparse.numblocks', '1'],
            ['GNU.sparse.map', `${huge - 5},5`],
            ['GNU.sparse.name', 'huge.img'],
          ]),
          Buffer.from('tail\n'),
        ),
      ]) {
        await assert.rejects(unpackLayer(Readable.from([raw]), 'none', work, { layer: LAYER, maxBytes: 1 << 30, maxLayerBytes: 1 << 30 }), (err: unknown) => {
          assert.ok(isKind(err, 'ResourceExhausted'), String(err));
          assert.equal(
            err.message,
            `layer ${LAYER}: sparse file "huge.img" is ${huge} bytes with its holes, beyond the configured limit of ${1 << 30} bytes (images.max_layer_bytes)`,
          );
          return true;
        });
        assert.deepEqual(fs.readdirSync(work), []);
      }
      // At the cap it is accepted, and only its data counts as written.
      const atCap = sparse10('edge.img', 1 << 30, [[(1 << 30) - 5, Buffer.from('tail\n')]]);
      const result = await unpackLayer(Readable.from([atCap]), 'none', work, { layer: LAYER, maxBytes: 1 << 20, maxLayerBytes: 1 << 30 });
      assert.equal(result.fileBytes, 5);
      assert.equal(fs.statSync(join(work, 'edge.img')).size, 1 << 30);
    });

    for (const [what, records, data, reason] of [
      [
        'a segment past the real size',
        [
          ['GNU.sparse.size', '10'],
          ['GNU.sparse.numblocks', '1'],
          ['GNU.sparse.map', '5,10'],
        ],
        10,
        /past the real size 10/,
      ],
      [
        'a map that does not add up to the data',
        [
          ['GNU.sparse.size', '100'],
          ['GNU.sparse.numblocks', '1'],
          ['GNU.sparse.map', '0,5'],
        ],
        10,
        /describes 5 bytes of data, the archive stores 10/,
      ],
      [
        'overlapping segments',
        [
          ['GNU.sparse.size', '100'],
          ['GNU.sparse.numblocks', '2'],
          ['GNU.sparse.map', '0,6,4,4'],
        ],
        10,
        /overlap/,
      ],
      [
        'a wrong segment count',
        [
          ['GNU.sparse.size', '100'],
          ['GNU.sparse.numblocks', '3'],
          ['GNU.sparse.map', '0,10'],
        ],
        10,
        /numblocks \(3\)/,
      ],
      [
        'a non-numeric offset',
        [
          ['GNU.sparse.size', '100'],
          ['GNU.sparse.numblocks', '1'],
          ['GNU.sparse.map', 'x,10'],
        ],
        10,
        /not a decimal number/,
      ],
      [
        'an unknown format',
        [
          ['GNU.sparse.major', '2'],
          ['GNU.sparse.minor', '0'],
          ['GNU.sparse.realsize', '10'],
        ],
        10,
        /unknown PAX sparse format 2\.0/,
      ],
    ] as const) {
      it(`refuses a sparse member with ${what} (DataLoss naming the layer)`, async () => {
        const raw = withPax(paxText(records.map(([k, v]) => [k, v])), Buffer.alloc(data, 'x'));
        await assert.rejects(unpack(raw), (err: unknown) => {
          assert.ok(isKind(err, 'DataLoss'), String(err));
          assert.ok(err.message.startsWith(`layer ${LAYER}: corrupt tar stream: `), err.message);
          assert.match(err.message, reason);
          return true;
        });
      });
    }
  });

  /** Expects `raw` refused as corrupt data, with `message` after the layer's prefix, and nothing written. */
  async function expectCorrupt(raw: Buffer, message: string | RegExp): Promise<void> {
    await assert.rejects(unpack(raw), (err: unknown) => {
      assert.ok(isKind(err, 'DataLoss'), String(err));
      const prefix = `layer ${LAYER}: corrupt tar stream: `;
      assert.ok(err.message.startsWith(prefix), err.message);
      if (typeof message === 'string') assert.equal(err.message.slice(prefix.length), message);
      else assert.match(err.message.slice(prefix.length), message);
      return true;
    });
    assert.deepEqual(fs.readdirSync(work), [], 'nothing written');
  }

  describe('extended attributes beyond what Linux holds', () => {
    const xattr = (name: string, bytes: number): [string, string] => [`SCHILY.xattr.${name}`, 'v'.repeat(bytes)];

    it('refuses a value over 64 KiB (XATTR_SIZE_MAX), naming the entry (its PAX path) and the attribute', async () => {
      const raw = withPax(paxText([xattr('user.big', 64 * 1024 + 1), ['path', 'opt/data/blob']]));
      await expectCorrupt(
        raw,
        'entry "opt/data/blob": the extended attribute "user.big" has a 65537-byte value, more than the 65536 bytes Linux allows (XATTR_SIZE_MAX)',
      );
    });

    it('refuses a 1 MiB value as its PAX header arrives, before the header is buffered whole', async () => {
      const raw = withPax(paxText([xattr('user.huge', 1 << 20), ['path', 'f']]));
      const scanner = new PaxXattrScanner();
      const expected = /a PAX header's extended attribute "user\.huge" has a 1048576-byte value, more than the 65536 bytes Linux allows \(XATTR_SIZE_MAX\)$/;
      // The header block and the first 4 KiB of its records: the rest (1 MiB) never arrives.
      assert.doesNotThrow(() => scanner.push(raw.subarray(0, BLOCK + 10)));
      assert.throws(() => scanner.push(raw.subarray(BLOCK + 10, BLOCK + 4096)), expected);
      // In a real unpack the blob arrives in chunks too.
      const chunks: Buffer[] = [];
      for (let i = 0; i < raw.length; i += 64 * 1024) chunks.push(raw.subarray(i, i + 64 * 1024));
      await assert.rejects(unpackLayer(Readable.from(chunks), 'none', work, { layer: LAYER, maxBytes: 1 << 30 }), (err: unknown) => {
        assert.ok(isKind(err, 'DataLoss'), String(err));
        assert.ok(err.message.startsWith(`layer ${LAYER}: corrupt tar stream: `), err.message);
        assert.match(err.message.slice(`layer ${LAYER}: corrupt tar stream: `.length), expected);
        return true;
      });
      // A long record of another key, or many small xattrs, are left to the whole header's parse.
      const comment = withPax(paxText([['comment', 'c'.repeat(1 << 20)], xattr('user.small', 10)]));
      const fine = new PaxXattrScanner();
      for (let i = 0; i < comment.length; i += 1000) fine.push(comment.subarray(i, i + 1000));
      assert.equal(fine.takeEntry(1, { name: 'f', type: 'file', size: 6 }).xattrs?.get('SCHILY.xattr.user.small')?.length, 10);
    });

    it('keeps a value of exactly 64 KiB, as bytes', () => {
      const scanner = new PaxXattrScanner();
      scanner.push(withPax(paxText([xattr('user.edge', 64 * 1024)])));
      const { xattrs } = scanner.takeEntry(1, { name: 'f', type: 'file', size: 6 });
      assert.equal(xattrs?.get('SCHILY.xattr.user.edge')?.length, 64 * 1024);
    });

    it('refuses an entry with more than 128 xattrs, and a name over 255 bytes (XATTR_NAME_MAX)', async () => {
      const many = Array.from({ length: 129 }, (_, i) => xattr(`user.a${i}`, 1));
      await expectCorrupt(withPax(paxText(many)), 'entry "f" has 129 extended attributes, more than 128');
      await expectCorrupt(
        withPax(paxText([xattr(`user.${'n'.repeat(251)}`, 1)])),
        /^entry "f": the extended attribute name "user\.n+"… is longer than the 255 bytes/,
      );
    });

    it('refuses an oversized value in a global PAX header', async () => {
      const body = Buffer.from(paxText([xattr('user.big', 100_000)]));
      const raw = Buffer.concat([ustarHeader('GlobalHead', 'g', body.length), padded(body), withPax(paxText([['mtime', '1']]))]);
      await expectCorrupt(raw, /^the global PAX header: the extended attribute "user\.big" has a 100000-byte value/);
    });
  });

  describe("inputs on which the tar parser and berth's header scanner could disagree", () => {
    const file = (name: string, content: string): Buffer => Buffer.concat([ustarHeader(name, '0', content.length), padded(Buffer.from(content))]);
    const end = Buffer.alloc(2 * BLOCK);

    it("refuses an old GNU long-name header (type 'N')", async () => {
      const body = Buffer.from('Renamed\0');
      await expectCorrupt(Buffer.concat([ustarHeader('././@LongLink', 'N', body.length), padded(body), file('f', 'x'), end]), /type 'N'\) is not supported/);
    });

    for (const [key, value] of [
      ['path', 'etc/passwd'],
      ['linkpath', '/etc/shadow'],
      ['size', '0'],
      ['GNU.sparse.size', '100'],
    ] as const) {
      it(`refuses a global PAX header that sets ${key}`, async () => {
        const body = Buffer.from(paxText([[key, value]]));
        const raw = Buffer.concat([ustarHeader('GlobalHead', 'g', body.length), padded(body), withPax(paxText([['mtime', '1']]))]);
        await expectCorrupt(raw, `a global PAX header sets ${key}, which would apply to every later entry (tar readers disagree on it)`);
      });
    }

    it('accepts a global PAX header of comments and times, and GNU long names', async () => {
      const global = Buffer.from(
        paxText([
          ['comment', 'built by hand'],
          ['mtime', '1600000000'],
        ]),
      );
      const long = `${'d'.repeat(120)}/${'f'.repeat(120)}`;
      const longBody = Buffer.from(`${long}\0`);
      const raw = Buffer.concat([
        ustarHeader('GlobalHead', 'g', global.length),
        padded(global),
        ustarHeader('././@LongLink', 'L', longBody.length),
        padded(longBody),
        file(long.slice(0, 99), 'long\n'),
        withPax(paxText([['path', 'renamed']])).subarray(0, -2 * BLOCK),
        end,
      ]);
      await unpack(raw);
      assert.equal(fs.readFileSync(join(work, long), 'utf8'), 'long\n');
      assert.equal(fs.readFileSync(join(work, 'renamed'), 'utf8'), 'hello\n');
    });

    it("reads a regular file whose name ends in '/' as a file with data, as tar-stream does: a PAX header in its data is not applied", async () => {
      // Berth's scanner used to take such an entry for a directory (as old tars do) and read
      // its data as headers: the sparse map hidden there was then applied to the next entry.
      const hidden = Buffer.from(
        paxText([
          ['GNU.sparse.size', String(1 << 30)],
          ['GNU.sparse.numblocks', '1'],
          ['GNU.sparse.map', '0,3'],
        ]),
      );
      const data = Buffer.concat([ustarHeader('PaxHeaders/after', 'x', hidden.length), padded(hidden)]);
      await unpack(Buffer.concat([ustarHeader('x/', '0', data.length), data, file('after', 'ok\n'), end]));
      assert.deepEqual(fs.readFileSync(join(work, 'x')), data);
      assert.equal(fs.statSync(join(work, 'after')).size, 3, 'not a 1 GiB sparse file');
      assert.equal(fs.readFileSync(join(work, 'after'), 'utf8'), 'ok\n');
    });

    it('refuses an old GNU sparse header with a bad checksum rather than rewrite it with a good one', async () => {
      const header = ustarHeader('db.img', 'S', 3, (b) => {
        b.write('ustar  \0', 257, 'latin1');
        b.write(`${(0).toString(8).padStart(11, '0')}\0`, 386, 'latin1');
        b.write(`${(3).toString(8).padStart(11, '0')}\0`, 398, 'latin1');
        b.write(`${(100).toString(8).padStart(11, '0')}\0`, 483, 'latin1');
      });
      const good = Buffer.concat([header, padded(Buffer.from('abc')), end]);
      await unpack(good);
      assert.equal(fs.statSync(join(work, 'db.img')).size, 100);
      fs.rmSync(join(work, 'db.img'));
      header[0] = (header[0] as number) ^ 1; // "eb.img": the checksum no longer matches
      await expectCorrupt(Buffer.concat([header, padded(Buffer.from('abc')), end]), 'entry "eb.img": invalid tar header checksum');
    });

    it("refuses an entry on which tar-stream's header and the scanner's walk disagree (name, type or size)", async () => {
      const raw = Buffer.concat([file('a', 'x'), withPax(paxText([['path', 'b']]))]);
      const right = [
        { name: 'a', type: 'file', size: 1 },
        { name: 'b', type: 'file', size: 6 },
      ];
      for (const [n, wrong, ours] of [
        [1, { ...right[0]!, name: 'c' }, '"a" (file, 1 bytes)'],
        [1, { ...right[0]!, type: 'directory' }, '"a" (file, 1 bytes)'],
        [2, { ...right[1]!, size: 7 }, '"b" (file, 6 bytes)'],
        [2, { ...right[1]!, name: 'f' }, '"b" (file, 6 bytes)'],
      ] as const) {
        const scanner = new PaxXattrScanner();
        scanner.push(raw);
        if (n === 2) scanner.takeEntry(1, right[0]!);
        assert.throws(
          () => scanner.takeEntry(n, wrong),
          new RegExp(
            `reads entry ${n} as "${wrong.name}" \\(${wrong.type}, ${wrong.size} bytes\\), berth's header scanner as ${ours.replace(/[()]/g, '\\$&')}: the two readers`,
          ),
        );
      }
      // A real unpack makes the same comparison for every entry.
      await unpack(raw);
      assert.deepEqual(fs.readdirSync(work).sort(), ['a', 'b']);
    });
  });

  describe('paths that make inodes of their own', () => {
    /** Unpacks `raw` with these limits, expecting ResourceExhausted naming the layer and `pattern`. */
    async function exhausted(raw: Buffer, limits: { maxEntries?: number; maxBytes?: number }, pattern: RegExp): Promise<void> {
      await assert.rejects(unpackLayer(Readable.from([raw]), 'none', work, { layer: LAYER, maxBytes: 1 << 30, ...limits }), (err: unknown) => {
        assert.ok(isKind(err, 'ResourceExhausted'), String(err));
        assert.ok(err.message.startsWith(`layer ${LAYER}: `), err.message);
        assert.match(err.message, pattern);
        return true;
      });
    }
    /** Directories and files under the snapshot (its inodes, less the root). */
    const inodes = (): number => (fs.readdirSync(work, { recursive: true }) as string[]).length;
    /** A one-file tar at `name`, the file holding "x". */
    const fileAt = (name: string): Buffer => tarOf([[name, Buffer.from('x')]]);
    function tarOf(files: Array<[string, Buffer]>): Buffer {
      const blocks: Buffer[] = [];
      for (const [name, data] of files) {
        if (Buffer.byteLength(name) > 100) {
          const record = paxText([['path', name]]);
          blocks.push(ustarHeader('PaxHeaders/p', 'x', Buffer.byteLength(record)), padded(Buffer.from(record)));
        }
        blocks.push(ustarHeader(name.slice(0, 99), '0', data.length), padded(data));
      }
      return Buffer.concat([...blocks, Buffer.alloc(2 * BLOCK)]);
    }
    const deep = (n: number, leaf = 'f'): string => `${'d/'.repeat(n - 1)}${leaf}`;

    it('counts each parent directory an entry needs but the layer does not list as an entry of its own', async () => {
      const result = await unpack(fileAt(deep(50)));
      assert.equal(result.entries, 1);
      assert.equal(result.implicitDirectories, 49);
      assert.equal(result.chargedBytes, result.tarBytes + 49 * 4096);
      assert.equal(inodes(), 50);
      fs.rmSync(work, { recursive: true });
      fs.mkdirSync(work);
      await exhausted(
        fileAt(deep(50)),
        { maxEntries: 20 },
        /has more than 20 entries \(counting the 19 parent directories its entries' paths need but it does not list\)/,
      );
      assert.ok(inodes() <= 20, `${inodes()} inodes made, over the limit of 20`);
    });

    it('stops a layer of entries with deep unique parents at the entry limit, not thousands of inodes later', async () => {
      // 200 entries of 100 unique directories each: 20,200 inodes from 200 tar entries.
      const raw = tarOf(Array.from({ length: 200 }, (_, i) => [`u${i}/${deep(100)}`, Buffer.from('x')] as [string, Buffer]));
      await exhausted(raw, { maxEntries: 1000 }, /has more than 1000 entries \(counting the \d+ parent directories/);
      assert.ok(inodes() <= 1000, `${inodes()} inodes made, over the limit of 1000`);
    });

    it('counts a 4 KiB block per implicit directory against the byte limit', async () => {
      const raw = fileAt(deep(200)); // 3 KB of tar, 199 directories: 796 KiB
      assert.ok(raw.length < 16 * 1024);
      await exhausted(raw, { maxBytes: 512 * 1024 }, /expands beyond the configured limit of 524288 bytes \(images\.max_layer_bytes\)/);
      assert.ok(inodes() <= 128, `${inodes()} directories made, more than 512 KiB of 4 KiB blocks`);
    });

    it(`refuses a path deeper than ${MAX_PATH_DEPTH} components, and takes one of exactly ${MAX_PATH_DEPTH}`, async () => {
      await exhausted(fileAt(deep(MAX_PATH_DEPTH + 1)), {}, /has a path of 257 components, over the limit of 256 for one path/);
      assert.equal(inodes(), 0, 'nothing made');
      const ok = await unpack(fileAt(deep(MAX_PATH_DEPTH)));
      assert.equal(ok.implicitDirectories, MAX_PATH_DEPTH - 1);
      assert.equal(fs.readFileSync(join(work, deep(MAX_PATH_DEPTH)), 'utf8'), 'x');
    });

    it(`refuses a path longer than ${MAX_PATH_BYTES} bytes`, async () => {
      const long = `${'n'.repeat(200)}/`.repeat(20) + 'f'.repeat(MAX_PATH_BYTES - 20 * 201 + 1);
      assert.equal(Buffer.byteLength(long), MAX_PATH_BYTES + 1);
      // The name in the message is clipped: entry "n…" is 7 + 4097 + 1 characters.
      await exhausted(fileAt(long), {}, /: entry "n{193}\.\.\. \(3905 more characters\) has a path of 4097 bytes, over the limit of 4096 for one path$/);
      assert.equal(inodes(), 0, 'nothing made');
    });

    it('refuses a hardlink whose target is deeper than the limit', async () => {
      const record = paxText([['linkpath', `${'a/'.repeat(MAX_PATH_DEPTH)}f`]]);
      const raw = Buffer.concat([
        ustarHeader('f', '0', 1),
        padded(Buffer.from('x')),
        ustarHeader('PaxHeaders/l', 'x', Buffer.byteLength(record)),
        padded(Buffer.from(record)),
        ustarHeader('l', '1', 0),
        Buffer.alloc(2 * BLOCK),
      ]);
      await exhausted(raw, {}, /hardlink "l" has a path of 257 components, over the limit of 256 for one path/);
    });
  });
});
