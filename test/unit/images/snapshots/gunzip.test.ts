/**
 * The gzip decoder of layer blobs (gunzip.ts): the gzip framing read by berth, the
 * deflate data inflated raw. Valid streams (several members, every optional header
 * field, zero padding) give what Node's gunzip gives, however they are cut into pieces;
 * malformed ones are refused through unpackLayer with DataLoss and zlib's words.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { deflateRawSync, gunzipSync, gzipSync } from 'node:zlib';
import { isKind } from '../../../../src/common/errors.js';
import { GzipDecoder } from '../../../../src/images/snapshots/gunzip.js';
import { unpackLayer } from '../../../../src/images/snapshots/unpack.js';
import { LAYER, makeTar } from '../../../helpers/tar-layers.js';

/** CRC-32 (IEEE), to write valid trailers and header CRCs. */
const TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (const x of b) c = TABLE[(c ^ x) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** One gzip member of `data` with the given optional header fields (RFC 1952). */
function member(data: Buffer, fields: { extra?: Buffer; name?: string; comment?: string; hcrc?: boolean; text?: boolean } = {}): Buffer {
  const flags =
    (fields.text ? 1 : 0) | (fields.hcrc ? 2 : 0) | (fields.extra ? 4 : 0) | (fields.name !== undefined ? 8 : 0) | (fields.comment !== undefined ? 16 : 0);
  const parts: Buffer[] = [Buffer.from([0x1f, 0x8b, 8, flags, 0x78, 0x56, 0x34, 0x12, 0, 3])];
  if (fields.extra) {
    const xlen = Buffer.alloc(2);
    xlen.writeUInt16LE(fields.extra.length);
    parts.push(xlen, fields.extra);
  }
  if (fields.name !== undefined) parts.push(Buffer.from(fields.name + '\0', 'latin1'));
  if (fields.comment !== undefined) parts.push(Buffer.from(fields.comment + '\0', 'latin1'));
  if (fields.hcrc) {
    const h = Buffer.alloc(2);
    h.writeUInt16LE(crc32(Buffer.concat(parts)) & 0xffff);
    parts.push(h);
  }
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(crc32(data), 0);
  trailer.writeUInt32LE(data.length % 2 ** 32, 4);
  return Buffer.concat([...parts, deflateRawSync(data, { level: 1 }), trailer]);
}

/** `b` cut into pieces of `size` bytes. */
function pieces(b: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < b.length; i += size) out.push(b.subarray(i, i + size));
  return out;
}

async function decode(parts: Buffer[]): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of new GzipDecoder(Readable.from(parts, { objectMode: false }))) out.push(c);
  return Buffer.concat(out);
}

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe('images: gzip decoding of layers', () => {
  it('reads every optional header field, as Node gunzip does, whatever the pieces', async () => {
    // Byte by byte, each piece is a round trip to zlib: the data stays small.
    const data = randomBytes(3000);
    const variants = [
      member(data),
      member(data, { text: true, name: 'layer.tar', comment: 'a comment', hcrc: true }),
      member(data, { extra: Buffer.from('AB\x04\x00abcd', 'latin1'), name: '' }),
      member(data, { extra: Buffer.alloc(0), comment: 'x'.repeat(10_000), hcrc: true }),
    ];
    for (const gz of variants) {
      assert.deepEqual(gunzipSync(gz), data, 'the fixture is valid gzip');
      for (const size of [1, 7, 4096, gz.length]) {
        assert.ok((await decode(pieces(gz, size))).equals(data), `pieces of ${size}`);
      }
    }
  });

  it('reads members one after another, and zero padding after the last', async () => {
    const a = randomBytes(3 << 20);
    const b = Buffer.from('and a second member');
    const c = Buffer.alloc(0);
    const whole = Buffer.concat([a, b, c]);
    const gz = Buffer.concat([gzipSync(a), member(b, { name: 'b' }), member(c), Buffer.alloc(1000)]);
    assert.deepEqual(gunzipSync(gz), whole);
    for (const size of [4093, 65536, 1 << 20, gz.length]) assert.ok((await decode(pieces(gz, size))).equals(whole), `pieces of ${size}`);
    // A member's deflate data ending exactly at a piece's end: zlib's end is seen on the next piece.
    const first = member(b);
    const cut = first.length - 8;
    assert.ok((await decode([first.subarray(0, cut), first.subarray(cut), member(b)])).equals(Buffer.concat([b, b])));
    // The same with 1 MiB blocks gathered from pieces, and a member of several blocks.
    const big = randomBytes((2 << 20) + 12345);
    const twice = Buffer.concat([member(big), member(big)]);
    assert.ok((await decode(pieces(twice, 65536))).equals(Buffer.concat([big, big])));
  });

  describe('unpackLayer', () => {
    let work: string;
    let target: string;
    let raw: Buffer;
    let gz: Buffer;

    before(async () => {
      raw = await makeTar([
        { header: { name: 'f' }, content: randomBytes(200_000) },
        { header: { name: 'g' }, content: Buffer.alloc(100_000, 1) },
      ]);
      gz = gzipSync(raw);
    });
    beforeEach(() => {
      work = fs.mkdtempSync(join(tmpdir(), 'berth-gunzip-'));
      target = join(work, 'snapshot');
      fs.mkdirSync(target);
    });
    afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

    const unpack = (blob: Buffer, size = 65536): ReturnType<typeof unpackLayer> =>
      unpackLayer(Readable.from(pieces(blob, size)), 'gzip', target, { layer: LAYER, maxBytes: 1 << 30 });

    it('gives the diff ID of the whole tar for a layer in several members, with all header fields', async () => {
      const half = 512 * 100;
      const blob = Buffer.concat([
        member(raw.subarray(0, half), { name: 'part1', comment: 'c', hcrc: true, extra: Buffer.from('xy\x00\x00', 'latin1') }),
        member(raw.subarray(half), { name: 'part2' }),
        Buffer.alloc(512),
      ]);
      for (const size of [1000, 65536]) {
        fs.rmSync(target, { recursive: true });
        fs.mkdirSync(target);
        const r = await unpack(blob, size);
        assert.equal(r.diffId, sha256(raw));
        assert.equal(r.tarBytes, raw.length);
        assert.equal(fs.statSync(join(target, 'f')).size, 200_000);
      }
    });

    it('does not check the CRC-32: the diff ID is what covers the content', async () => {
      const blob = Buffer.from(gz);
      blob[blob.length - 8]! ^= 0xff;
      assert.throws(() => gunzipSync(blob), /incorrect data check/);
      assert.equal((await unpack(blob)).diffId, sha256(raw));
    });

    /** Expects `blob` refused with DataLoss, `layer <LAYER>: corrupt gzip data: ` and `detail`. */
    async function refused(blob: Buffer, detail: RegExp, size = 65536): Promise<void> {
      await assert.rejects(unpack(blob, size), (err: unknown) => {
        assert.ok(isKind(err, 'DataLoss'), String(err));
        assert.ok(err.message.startsWith(`layer ${LAYER}: corrupt gzip data: `), err.message);
        assert.match(err.message, detail);
        return true;
      });
    }

    it('refuses a wrong ISIZE', async () => {
      const blob = Buffer.from(gz);
      blob.writeUInt32LE(raw.length + 1, blob.length - 4);
      await refused(blob, /incorrect length check/);
    });

    it('refuses a truncated trailer, body or header, and an empty blob', async () => {
      await refused(gz.subarray(0, gz.length - 3), /unexpected end of file/);
      await refused(gz.subarray(0, gz.length - 8), /unexpected end of file/);
      await refused(gz.subarray(0, gz.length >> 1), /unexpected end of file/);
      await refused(gz.subarray(0, 6), /unexpected end of file/);
      const named = member(raw, { name: 'a long name' });
      await refused(named.subarray(0, 15), /unexpected end of file/, 1);
      await refused(Buffer.alloc(0), /unexpected end of file/);
    });

    it('refuses garbage after the stream, and after its zero padding', async () => {
      await refused(Buffer.concat([gz, Buffer.from('garbage')]), /incorrect header check/);
      await refused(Buffer.concat([gz, Buffer.from([0x1f])]), /unexpected end of file/);
      await refused(Buffer.concat([gz, Buffer.alloc(100), Buffer.from('x')]), /non-zero bytes after the zero padding/);
      await refused(Buffer.concat([gz, Buffer.alloc(100), gz]), /non-zero bytes after the zero padding/);
    });

    it('refuses a bad magic number, another method, reserved flags and corrupt deflate data', async () => {
      await refused(raw, /incorrect header check/);
      const method = Buffer.from(gz);
      method[2] = 7;
      await refused(method, /unknown compression method/);
      const flags = Buffer.from(gz);
      flags[3] = 0x20;
      await refused(flags, /unknown header flags set/);
      const bad = Buffer.from(gz);
      bad[10] = 0xff; // the first deflate block header: block type 3 (reserved)
      await refused(bad, /invalid block type/);
    });
  });
});
