/**
 * Device resolution (src/containers/devices.ts) of a directory of device nodes the test
 * makes with mknod (root).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveDevices } from '../../../src/containers/devices.js';

describe('devices: resolution', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-devices-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('a directory: every node under it, recursively, under the container path; links, files and pts skipped', async function () {
    if (process.getuid?.() !== 0) this.skip();
    mkdirSync(join(dir, 'sub'));
    mkdirSync(join(dir, 'pts'));
    execFileSync('mknod', ['-m', '0620', join(dir, 'a'), 'c', '1', '3']);
    execFileSync('mknod', ['-m', '0600', join(dir, 'sub', 'b'), 'b', '7', '9']);
    execFileSync('mknod', [join(dir, 'pts', 'p'), 'c', '136', '1']);
    symlinkSync('/dev/null', join(dir, 'link'));
    writeFileSync(join(dir, 'file'), 'x');
    const found = await resolveDevices([{ host_path: dir, container_path: '/dev/grp', permissions: 'r' }]);
    assert.deepEqual(
      found.map((d) => [d.path, d.type, d.major, d.minor, d.fileMode, d.permissions]),
      [
        ['/dev/grp/a', 'c', 1, 3, 0o620, 'r'],
        ['/dev/grp/sub/b', 'b', 7, 9, 0o600, 'r'],
      ],
    );
  });
});
