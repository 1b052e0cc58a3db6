/**
 * The OCI runtime run from a sealed in-memory copy (src/oci/sealed-binary.ts), with the
 * real runc of this machine (root only): the copy cannot be changed, runc run from it
 * works and does not copy itself again, and an upgraded binary on disk is noticed (a watch
 * of its directory, or a look at least once a second) and used from its path until copied again.
 */
import assert from 'node:assert/strict';
import {
  closeSync,
  copyFileSync,
  existsSync,
  ftruncateSync,
  openSync,
  readFileSync,
  readlinkSync,
  renameSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execProcess } from '../../../src/common/process.js';
import { SealedBinary } from '../../../src/oci/sealed-binary.js';
import { OciRuntime } from '../../../src/oci/oci-runtime.js';
import { until } from '../../helpers/berthd.js';

const RUNC = '/usr/sbin/runc';

(process.getuid?.() === 0 && existsSync(RUNC) ? describe : describe.skip)('SealedBinary (root, real runc)', () => {
  let dir: string;
  const made: SealedBinary[] = [];
  beforeEach(async () => (dir = await mkdtemp(join(tmpdir(), 'berth-sealed-'))));
  afterEach(async () => {
    for (const s of made.splice(0)) s.close();
    await rm(dir, { recursive: true, force: true });
  });

  const sealed = (path: string): SealedBinary => {
    const s = new SealedBinary(path);
    made.push(s);
    return s;
  };

  it('runs from a memfd that cannot be written, once a run of it has worked', async () => {
    const s = sealed(RUNC);
    const path = await until(async () => (s.execPath() !== RUNC ? s.execPath() : undefined), 10_000);
    assert.match(path, new RegExp(`^/proc/${process.pid}/fd/\\d+$`));
    assert.match(readlinkSync(path), /^\/memfd:berth-runtime/);
    // F_SEAL_WRITE and F_SEAL_GROW: not even root may change it.
    const fd = openSync(path, 'r+');
    try {
      assert.throws(() => writeSync(fd, 'x', 0), { code: 'EPERM' });
      assert.throws(() => ftruncateSync(fd, 0), { code: 'EPERM' });
    } finally {
      closeSync(fd);
    }
    const r = await execProcess(path, ['--version']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^runc version/);
  });

  it('uses the binary on disk once its change is noticed, and a new copy once that one is checked', async () => {
    const bin = join(dir, 'runc');
    copyFileSync(RUNC, bin);
    const s = sealed(bin);
    const first = await until(async () => (s.execPath() !== bin ? s.execPath() : undefined), 10_000);
    const later = new Date(Date.now() + 5000);
    utimesSync(bin, later, later);
    // Noticed through the watch of its directory, or the timed look: not at the same instant.
    await until(async () => (s.execPath() === bin ? true : undefined), 5000);
    const second = await until(async () => (s.execPath() !== bin ? s.execPath() : undefined), 10_000);
    assert.notEqual(second, first);
  });

  it('notices a binary replaced by a rename through the watch of its directory, long before its timed look', async () => {
    const bin = join(dir, 'runc');
    copyFileSync(RUNC, bin);
    const s = new SealedBinary(bin, undefined, { recheckMs: 3_600_000 });
    made.push(s);
    const first = await until(async () => (s.execPath() !== bin ? s.execPath() : undefined), 10_000);
    // As a package manager upgrades it: a new file renamed over the old.
    copyFileSync(RUNC, join(dir, 'runc.new'));
    renameSync(join(dir, 'runc.new'), bin);
    await until(async () => (s.execPath() === bin ? true : undefined), 10_000);
    const second = await until(async () => (s.execPath() !== bin ? s.execPath() : undefined), 10_000);
    assert.notEqual(second, first);
  });

  it('falls back to the path for a binary that cannot be run from a copy, and for a missing one', async () => {
    const script = join(dir, 'fails');
    copyFileSync('/bin/false', script);
    const s = sealed(script);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(s.execPath(), script, '--version failed, so the copy is not used');
    // Not copied and tried again for every command, only once the binary changes.
    const counted = join(dir, 'counted');
    writeFileSync(counted, `#!/bin/sh\necho run >> ${join(dir, 'runs')}\nexit 1\n`, { mode: 0o755 });
    const c = sealed(counted);
    const runs = (): number => (existsSync(join(dir, 'runs')) ? readFileSync(join(dir, 'runs'), 'utf8').split('\n').length - 1 : 0);
    await until(async () => (runs() === 1 ? true : undefined), 10_000);
    for (let i = 0; i < 20; i++) {
      assert.equal(c.execPath(), counted);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(runs(), 1, 'a copy that failed its check is not made again for the same binary');
    const later = new Date(Date.now() + 5000);
    utimesSync(counted, later, later);
    await until(async () => (c.execPath() === counted && runs() === 2 ? true : undefined), 10_000);
    const missing = sealed(join(dir, 'none'));
    assert.equal(missing.execPath(), join(dir, 'none'));
  });

  it("gives OciRuntime's commands the copy (exec argv and the shim's runtime path)", async () => {
    const root = join(dir, 'state');
    const rt = new OciRuntime({ handler: 'runc', path: RUNC, root, sealedCopy: true });
    try {
      const file = await until(async () => {
        const f = rt.execArgv('c1', ['true'], { pidFile: '/p', tty: false }).file;
        return f !== RUNC ? f : undefined;
      }, 10_000);
      assert.match(file, /^\/proc\/\d+\/fd\/\d+$/);
      assert.equal(rt.shimArgs().path, file);
      // Commands still name the binary by its path in their errors.
      await assert.rejects(rt.start('nosuch'), { message: /^\/usr\/sbin\/runc start nosuch: / });
      assert.equal(await rt.state('nosuch'), undefined);
    } finally {
      rt.close();
    }
  });
});
