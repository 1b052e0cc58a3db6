/**
 * Image names as kubelet reads them: repo digests of every repository an image was
 * pulled through (ImageStatus, ListImages), and a container's image named as the user
 * wrote it with its repo digest as image_ref (ContainerStatus, ListContainers); and
 * ImageFsInfo's two filesystems, images apart from the containers' writable layers.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';

describe('image names', function () {
  this.timeout(90_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  it('an image pulled through two repositories lists both repo digests; containers report the one they were named by', async () => {
    const { busybox, busyboxDocker } = reg.fx;
    assert.equal(busybox.id, busyboxDocker.id, 'the fixtures are one image (config) under two repositories');
    assert.notEqual(busybox.digest, busyboxDocker.digest);
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    await b.image.PullImage({ image: { image: busybox.ref } });
    assert.deepEqual((await b.image.ImageStatus({ image: { image: busybox.id } })).image!.repo_digests, [busybox.digestRef]);
    await b.image.PullImage({ image: { image: busyboxDocker.ref } });
    const st = (await b.image.ImageStatus({ image: { image: busybox.id } })).image!;
    assert.deepEqual([...st.repo_digests].sort(), [busybox.digestRef, busyboxDocker.digestRef].sort());
    assert.deepEqual([...st.repo_tags].sort(), [busybox.ref, busyboxDocker.ref].sort());
    const listed = (await b.image.ListImages({})).images.find((i) => i.id === busybox.id)!;
    assert.deepEqual([...listed.repo_digests].sort(), [busybox.digestRef, busyboxDocker.digestRef].sort());

    const { pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({
      config: {
        metadata: { name: 'names', namespace: 'test', uid: 'names', attempt: 0 },
        linux: { security_context: { namespace_options: { network: 'NODE' } } },
      },
    });
    cleanup.push(() => b.runtime.RemovePodSandbox({ pod_sandbox_id: pod }).then(() => undefined));
    const create = async (name: string, image: { image: string; user_specified_image?: string }): Promise<string> =>
      (
        await b.runtime.CreateContainer({
          pod_sandbox_id: pod,
          config: { metadata: { name, attempt: 0 }, image, command: ['true'] },
          sandbox_config: { metadata: { name: 'names', namespace: 'test', uid: 'names', attempt: 0 } },
        })
      ).container_id;
    // As kubelet sends it: the image ID, and the pod spec's name as user_specified_image.
    const byKubelet = await create('kubelet', { image: busybox.id, user_specified_image: busyboxDocker.ref });
    // As crictl sends it: the name only.
    const byName = await create('crictl', { image: busybox.ref });

    const k = (await b.runtime.ContainerStatus({ container_id: byKubelet })).status!;
    assert.equal(k.image!.image, busyboxDocker.ref);
    assert.equal(k.image!.user_specified_image, busyboxDocker.ref);
    assert.equal(k.image_ref, busyboxDocker.digestRef, 'the repo digest of the repository the pod named');
    assert.equal(k.image_id, busybox.id);
    const n = (await b.runtime.ContainerStatus({ container_id: byName })).status!;
    assert.equal(n.image!.image, busybox.ref);
    assert.equal(n.image_ref, busybox.digestRef);

    const list = new Map((await b.runtime.ListContainers({})).containers.map((c) => [c.id, c]));
    assert.equal(list.get(byKubelet)!.image!.image, busyboxDocker.ref);
    assert.equal(list.get(byKubelet)!.image_ref, busyboxDocker.digestRef);
    assert.equal(list.get(byName)!.image_ref, busybox.digestRef);
    assert.equal(list.get(byName)!.image_id, busybox.id);
  });

  it('ImageFsInfo: container_filesystems holds what containers wrote, image_filesystems only the images', async () => {
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const before = await b.image.ImageFsInfo({});
    const mountpoint = join(b.root, 'snapshots');
    assert.equal(before.image_filesystems[0]!.fs_id!.mountpoint, mountpoint);
    assert.equal(before.container_filesystems.length, 1);
    assert.equal(before.container_filesystems[0]!.fs_id!.mountpoint, mountpoint, 'one filesystem: kubelet sees no split image filesystem');
    assert.equal(before.container_filesystems[0]!.used_bytes!.value, '0', 'no container yet');
    const imageBytes = before.image_filesystems[0]!.used_bytes!.value;

    const meta = { name: 'fs', namespace: 'test', uid: 'fs', attempt: 0 };
    const { pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({
      config: { metadata: meta, linux: { security_context: { namespace_options: { network: 'NODE' } } } },
    });
    cleanup.push(() => b.runtime.RemovePodSandbox({ pod_sandbox_id: pod }).then(() => undefined));
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: {
        metadata: { name: 'writer', attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command: ['sh', '-c', 'mkdir /data && for i in 1 2 3 4 5; do echo $i > /data/f$i; done; dd if=/dev/urandom of=/data/big bs=1024 count=3072'],
      },
      sandbox_config: { metadata: meta },
    });
    await b.runtime.StartContainer({ container_id: id });
    await until(async () => ((await b.runtime.ContainerStatus({ container_id: id })).status!.state === 'CONTAINER_EXITED' ? true : undefined));
    assert.equal((await b.runtime.ContainerStatus({ container_id: id })).status!.exit_code, 0);
    // The figure is refreshed at most every 10 s; the earlier answer may be that old.
    const after = await until(async () => {
      const r = await b.image.ImageFsInfo({});
      return BigInt(r.container_filesystems[0]!.used_bytes!.value) > 0n ? r : undefined;
    }, 20_000);
    const written = after.container_filesystems[0]!;
    assert.ok(BigInt(written.used_bytes!.value) >= 3n * 1024n * 1024n, `3 MiB written, ${written.used_bytes!.value} bytes counted`);
    assert.ok(BigInt(written.inodes_used!.value) >= 7n, `the dir and six files, ${written.inodes_used!.value} inodes counted`);
    assert.equal(after.image_filesystems[0]!.used_bytes!.value, imageBytes, 'the writable layer does not count as image data');
  });
});
