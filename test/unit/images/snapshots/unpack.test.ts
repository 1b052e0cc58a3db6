/**
 * Layer unpack: refusals, bounds, corrupt streams and cancellation, as any user. What
 * needs root (owners, devices, trusted xattrs) is in
 * test/integration/images/snapshots/unpack.test.ts.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { BerthError, isKind } from '../../../../src/common/errors.js';
import type { LayerCompression, UnpackOptions, UnpackResult } from '../../../../src/images/snapshots/unpack.js';
import { unpackLayer } from '../../../../src/images/snapshots/unpack.js';
import { compress, expectRefused, LAYER, makeTar, openFds, unpackInto, type Entry } from '../../../helpers/tar-layers.js';
import { until } from '../../../helpers/berthd.js';

/** Pids of this process's children whose command is `name`. */
function childrenNamed(name: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid && comm === name) pids.push(Number(entry));
    } catch {
      // the process went away meanwhile
    }
  }
  return pids;
}

/** Rewrites the typeflag of the header at `offset` and fixes its checksum. */
function setTypeflag(tarBuf: Buffer, offset: number, flag: string): void {
  tarBuf[offset + 156] = flag.charCodeAt(0);
  tarBuf.fill(0x20, offset + 148, offset + 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += tarBuf[offset + i] as number;
  tarBuf.write(`${sum.toString(8).padStart(6, '0')}\0 `, offset + 148, 'latin1');
}

describe('images: layer unpack', () => {
  let work: string;
  let target: string;

  beforeEach(() => {
    work = fs.mkdtempSync(join(tmpdir(), 'berth-unpack-'));
    target = join(work, 'snapshot');
    fs.mkdirSync(target);
  });
  afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

  const unpack = (raw: Buffer, compression: LayerCompression = 'none', opts: Partial<UnpackOptions> = {}): Promise<UnpackResult> =>
    unpackInto(target, raw, compression, opts);
  const refused = (entries: Entry[], pattern: RegExp): Promise<void> => expectRefused(target, entries, pattern);

  it('closes the file it was writing when aborted mid-entry', async () => {
    const raw = await makeTar([{ header: { name: 'big' }, content: Buffer.alloc(8 << 20, 5) }]);
    const blob = gzipSync(raw, { level: 1 });
    const input = new PassThrough();
    input.write(blob.subarray(0, blob.length >> 1));
    const fds = openFds();
    const controller = new AbortController();
    const promise = unpackLayer(input, 'gzip', target, { layer: LAYER, maxBytes: 1 << 30, signal: controller.signal });
    const size = (): number => (fs.existsSync(join(target, 'big')) ? fs.statSync(join(target, 'big')).size : 0);
    await until(async () => (size() > 0 ? true : undefined), 5000, 10);
    controller.abort(new Error('cancelled'));
    await assert.rejects(promise, /cancelled/);
    assert.equal(openFds(), fds);
  });

  it('refuses an absolute entry name', async () => {
    await refused([{ header: { name: '/etc/evil' }, content: 'x' }], /entry "\/etc\/evil" has an absolute name/);
  });

  it('refuses an entry name with ..', async () => {
    await refused([{ header: { name: '../evil' }, content: 'x' }], /entry "\.\.\/evil" would escape the snapshot/);
    await refused([{ header: { name: 'a/../../evil' }, content: 'x' }], /would escape the snapshot/);
  });

  it('refuses a hardlink to ../x or to an absolute path', async () => {
    fs.writeFileSync(join(work, 'x'), 'secret');
    await refused([{ header: { name: 'h', type: 'link', linkname: '../x' } }], /hardlink "h" would escape the snapshot/);
    await refused([{ header: { name: 'h', type: 'link', linkname: join(work, 'x') } }], /hardlink "h" points to the absolute path/);
    assert.equal(fs.statSync(join(work, 'x')).nlink, 1);
  });

  it('refuses entry types it does not know, such as a GNU multi-volume continuation', async () => {
    const raw = await makeTar([{ header: { name: 'volume' }, content: 'data' }]);
    setTypeflag(raw, 0, 'M');
    await assert.rejects(unpack(raw), (err: unknown) => {
      assert.ok(isKind(err, 'FailedPrecondition'), String(err));
      assert.match(err.message, /^layer sha256:[0-9a-f]+: entry "volume" has a tar entry type berth cannot unpack/);
      return true;
    });
  });

  it('stops with ResourceExhausted when the layer expands beyond maxBytes', async () => {
    const raw = await makeTar([{ header: { name: 'zeros' }, content: Buffer.alloc(64 << 20) }]);
    const blob = gzipSync(raw);
    assert.ok(blob.length < 1 << 20, 'the fixture stays small');
    await assert.rejects(unpackLayer(Readable.from([blob]), 'gzip', target, { layer: LAYER, maxBytes: 4 << 20 }), (err: unknown) => {
      assert.ok(isKind(err, 'ResourceExhausted'), String(err));
      assert.equal(err.message, `layer ${LAYER}: expands beyond the configured limit of ${4 << 20} bytes (images.max_layer_bytes)`);
      return true;
    });
  });

  it('fails with DataLoss on truncated gzip, truncated zstd and a corrupt tar', async () => {
    const raw = await makeTar([{ header: { name: 'f' }, content: Buffer.alloc(200_000, 1) }]);
    const cases: Array<[LayerCompression, Buffer, RegExp]> = [
      ['gzip', gzipSync(raw).subarray(0, 100), /corrupt gzip data/],
      ['zstd', compress(raw, 'zstd').subarray(0, 40), /corrupt zstd data/],
      ['none', raw.subarray(0, 10_000), /corrupt tar stream/],
      ['none', Buffer.alloc(1024, 'garbage'), /corrupt tar stream/],
    ];
    for (const [compression, blob, pattern] of cases) {
      await assert.rejects(unpackLayer(Readable.from([blob]), compression, target, { layer: LAYER, maxBytes: 1 << 30 }), (err: unknown) => {
        assert.ok(isKind(err, 'DataLoss'), `${compression}: ${String(err)}`);
        assert.ok(err.message.startsWith(`layer ${LAYER}: `), err.message);
        assert.match(err.message, pattern);
        return true;
      });
    }
    assert.deepEqual(childrenNamed('zstd'), []);
  });

  it('passes on a BerthError of the blob stream itself', async () => {
    const blob = new PassThrough();
    const promise = unpackLayer(blob, 'gzip', target, { layer: LAYER, maxBytes: 1 << 30 });
    blob.destroy(new BerthError('Unavailable', 'registry went away'));
    await assert.rejects(promise, (err: unknown) => isKind(err, 'Unavailable') && err.message === 'registry went away');
  });

  it('rethrows the abort reason and leaves no zstd process behind', async () => {
    const raw = await makeTar([{ header: { name: 'big' }, content: Buffer.alloc(4 << 20, 3) }]);
    const blob = compress(raw, 'zstd');
    const input = new PassThrough();
    input.write(blob.subarray(0, blob.length >> 1)); // and never the rest: the unpack waits
    const controller = new AbortController();
    const promise = unpackLayer(input, 'zstd', target, { layer: LAYER, maxBytes: 1 << 30, signal: controller.signal });
    await until(async () => (childrenNamed('zstd').length > 0 ? true : undefined), 2000, 20);
    assert.equal(childrenNamed('zstd').length, 1, 'zstd runs while unpacking');
    const reason = new Error('pull cancelled');
    controller.abort(reason);
    await assert.rejects(promise, (err: unknown) => err === reason);
    assert.deepEqual(childrenNamed('zstd'), []);
  });

  it('refuses to start when the signal is already aborted', async () => {
    const controller = new AbortController();
    controller.abort(new Error('too late'));
    await assert.rejects(
      unpackLayer(Readable.from([Buffer.alloc(0)]), 'none', target, {
        layer: LAYER,
        maxBytes: 1,
        signal: controller.signal,
      }),
      /too late/,
    );
  });
});
