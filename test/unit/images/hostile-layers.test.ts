/**
 * Hostile layers the unpacker must refuse or tame: malformed PAX records (refused as
 * corrupt data naming the layer). Each layer is built here, byte by byte where tar-stream
 * would not write it.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { isKind } from '../../../src/common/errors.js';
import { PaxXattrScanner } from '../../../src/images/snapshots/pax-xattrs.js';
import { unpackLayer } from '../../../src/images/snapshots/unpack.js';

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

/** A tar stream of a PAX header with `records` (raw bytes) before a small regular file. */
function withPax(records: string): Buffer {
  const body = Buffer.from(records, 'utf8');
  const content = Buffer.from('hello\n');
  return Buffer.concat([
    ustarHeader('PaxHeaders/f', 'x', body.length),
    padded(body),
    ustarHeader('f', '0', content.length),
    padded(content),
    Buffer.alloc(2 * BLOCK),
  ]);
}

describe('images: hostile layers', () => {
  let work: string;
  beforeEach(() => (work = fs.mkdtempSync(join(tmpdir(), 'berth-hostile-'))));
  afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

  const unpack = (raw: Buffer) => unpackLayer(Readable.from([raw]), 'none', work, { layer: LAYER, maxBytes: 1 << 30 });

  describe('strict PAX records', () => {
    it('accepts well-formed records, NUL padding after them included', async () => {
      const ok = withPax('29 SCHILY.xattr.user.k=value\n');
      await unpack(ok);
      assert.equal(fs.readFileSync(join(work, 'f'), 'utf8'), 'hello\n');
      new PaxXattrScanner().push(withPax('29 SCHILY.xattr.user.k=value\n\0\0\0'));
    });

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
});
