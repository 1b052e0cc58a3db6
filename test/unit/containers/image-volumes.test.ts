import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../src/common/errors.js';
import { planImageVolumes, resolveInRoot } from '../../../src/containers/image-volumes.js';
import type { CriMount } from '../../../src/containers/mounts.js';
import type { ImageRecord } from '../../../src/images/image-repository.js';

const mount = (m: Partial<CriMount>): CriMount => ({
  container_path: '/v',
  host_path: '',
  readonly: true,
  selinux_relabel: false,
  propagation: 'PROPAGATION_PRIVATE',
  ...m,
});

describe('containers: image volumes', () => {
  const present = new Set(['busybox']);
  const images = { find: (s: string) => (present.has(s) ? ({ id: 'sha256:x' } as ImageRecord) : undefined) };
  const plan = (mounts: CriMount[]): ReturnType<typeof planImageVolumes> => planImageVolumes(mounts, { images });
  const fails = (fn: () => unknown, kind: Parameters<typeof isKind>[1], re: RegExp): void =>
    assert.throws(fn, (e: unknown) => isKind(e, kind) && re.test((e as Error).message));

  it('plans the image mounts only, with their index and sub path', () => {
    const plans = plan([mount({ host_path: '/h' }), mount({ image: { image: 'busybox' }, image_sub_path: 'etc/x' }), mount({ image: null })]);
    assert.deepEqual(plans, [{ index: 1, image: 'busybox', subPath: 'etc/x' }]);
  });

  it('refuses bad sub paths with INVALID_ARGUMENT naming the field', () => {
    for (const [sub, re] of [
      ['/etc', /mounts\[0\]\.image_sub_path "\/etc" must be a relative path/],
      ['..', /mounts\[0\]\.image_sub_path "\.\." must not contain "\.\." segments/],
      ['a/../../b', /must not contain "\.\." segments/],
      ['a\0b', /NUL/],
    ] as const) {
      fails(() => plan([mount({ image: { image: 'busybox' }, image_sub_path: sub })]), 'InvalidArgument', re);
    }
    fails(
      () => plan([mount({ host_path: '/h', image_sub_path: 'x' })]),
      'InvalidArgument',
      /mounts\[0\]\.image_sub_path is only valid with mounts\[0\]\.image/,
    );
    fails(() => plan([mount({ host_path: '/h', image: { image: 'busybox' } })]), 'InvalidArgument', /host_path and image are exclusive/);
  });

  it('answers NOT_FOUND for an absent image', () => {
    fails(() => plan([mount({ image: { image: 'nope' } })]), 'NotFound', /mounts\[0\]\.image: image "nope" not found; pull it first/);
  });

  describe('resolveInRoot', () => {
    let root: string;
    before(() => {
      root = mkdtempSync(join(tmpdir(), 'berth-imgvol-'));
      mkdirSync(join(root, 'data/dir'), { recursive: true });
      writeFileSync(join(root, 'data/file'), 'f');
      symlinkSync('/data/dir', join(root, 'abs'));
      symlinkSync('../../../../etc', join(root, 'data/up'));
      symlinkSync('/etc/passwd', join(root, 'data/host'));
      symlinkSync('loop', join(root, 'loop'));
    });
    after(() => rmSync(root, { recursive: true, force: true }));
    const resolve = (sub: string): Promise<string> => resolveInRoot(root, sub, 'f', 'img');

    it('follows symlinks inside the image, never out of it', async () => {
      assert.equal(await resolve('data/dir'), join(root, 'data/dir'));
      assert.equal(await resolve('abs'), join(root, 'data/dir'), 'an absolute link restarts at the image root');
      assert.equal(await resolve('data/file'), join(root, 'data/file'));
      await assert.rejects(resolve('data/up'), /"data\/up" does not exist in image img/, '.. stops at the image root (there is no /etc in it)');
      await assert.rejects(resolve('data/host'), /does not exist/, 'an absolute link to a host file stays in the image');
    });

    it('refuses what does not exist, a file used as a directory, and link loops', async () => {
      await assert.rejects(resolve('nope'), (e: unknown) => isKind(e, 'InvalidArgument'));
      await assert.rejects(resolve('data/file/x'), /not a directory/);
      await assert.rejects(resolve('loop'), /too many symbolic links/);
    });
  });
});
