/**
 * The exit monitor watches each running container's shim (conmon) through a pidfd: a shim
 * killed with SIGKILL is noticed that way, also by a berthd restarted after it started the
 * shim, berthd holds one pidfd per followed shim and none once the containers are gone; and
 * where pidfds cannot be used (BERTH_DISABLE_PIDFD=1) the shims are checked in /proc, as
 * before.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Berthd, until } from '../helpers/berthd.js';
import { killAndWait } from '../helpers/processes.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';

describe('shim exit watch', function () {
  this.timeout(60_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  /** The pidfds berthd holds. */
  const pidfdsOf = (b: Berthd): number =>
    readdirSync(`/proc/${b.proc.pid}/fd`).filter((fd) => {
      try {
        return readlinkSync(`/proc/${b.proc.pid}/fd/${fd}`) === 'anon_inode:[pidfd]';
      } catch {
        return false;
      }
    }).length;

  /** Waits until berthd holds `n` pidfds (a short-lived one of a child it spawned may come and go). */
  const expectPidfds = async (b: Berthd, n: number, what: string): Promise<void> => {
    await until(async () => (pidfdsOf(b) === n ? true : undefined), 10_000).catch(() => undefined);
    assert.equal(pidfdsOf(b), n, what);
  };

  interface Pod {
    id: string;
    config: Record<string, unknown>;
  }

  async function podOn(b: Berthd, name: string): Promise<Pod> {
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const config = {
      metadata: { name, namespace: 'test', uid: `u-${name}`, attempt: 0 },
      log_directory: logDir,
      // The node's network: no CNI needed. Each container its own PID namespace.
      linux: { security_context: { namespace_options: { network: 'NODE', pid: 'CONTAINER' } } },
    };
    return { id: (await b.runtime.RunPodSandbox({ config: config as never })).pod_sandbox_id, config };
  }

  async function sleeper(b: Berthd, pod: Pod, name: string): Promise<string> {
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod.id,
      config: { metadata: { name, attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sleep', '1000'], log_path: `${name}.log` } as never,
      sandbox_config: pod.config as never,
    });
    await b.runtime.StartContainer({ container_id: id });
    return id;
  }

  const pidsOf = async (b: Berthd, id: string) =>
    JSON.parse((await b.runtime.ContainerStatus({ container_id: id, verbose: true })).info.info!) as { pid: number; shimPid: number };

  /** Kills the shim, then the container's process, and waits for the container to be UNKNOWN; how berthd noticed the shim's death. */
  async function killShimThenContainer(b: Berthd, id: string): Promise<unknown> {
    const { pid, shimPid } = await pidsOf(b, id);
    await killAndWait(shimPid);
    const noticed = await until(async () => {
      const r = b.records().find((x) => x.msg === 'the shim of a running container died; following the container through the runtime' && x.container === id);
      return r?.noticed_by;
    }, 10_000);
    assert.equal((await b.runtime.ContainerStatus({ container_id: id })).status!.state, 'CONTAINER_RUNNING', 'it still runs without its shim');
    await killAndWait(pid);
    const state = await until(async () => {
      const s = (await b.runtime.ContainerStatus({ container_id: id })).status!;
      return s.state !== 'CONTAINER_RUNNING' ? s.state : undefined;
    }, 10_000);
    assert.equal(state, 'CONTAINER_UNKNOWN');
    return noticed;
  }

  it('notices a shim killed with SIGKILL through its pidfd, across a restart, holding one pidfd per running container and none after', async () => {
    let b = await Berthd.start();
    cleanup.push(() => b.dispose());
    const pod = await podOn(b, 'pidfd');
    const a = await sleeper(b, pod, 'a');
    const c = await sleeper(b, pod, 'c');
    await expectPidfds(b, 2, 'one pidfd per running container’s shim');

    assert.equal(await killShimThenContainer(b, a), 'pidfd');
    await expectPidfds(b, 1, 'the dead shim’s pidfd is closed');

    // A restarted berthd follows the running container again, through a pidfd of its shim.
    await b.stop('SIGKILL');
    b = await Berthd.start({ reuse: { dir: b.dir } });
    assert.equal((await b.runtime.ContainerStatus({ container_id: c })).status!.state, 'CONTAINER_RUNNING');
    await expectPidfds(b, 1, 'the restarted berthd watches the shim it found');
    assert.equal(await killShimThenContainer(b, c), 'pidfd');
    await expectPidfds(b, 0, 'no pidfd is left once no shim is followed');

    await b.runtime.StopPodSandbox({ pod_sandbox_id: pod.id });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id });
    await expectPidfds(b, 0, 'no pidfd is left after the pod is removed');
  });

  it('a container that exits by itself is recorded with its exit code, and its shim’s pidfd is closed', async () => {
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    const pod = await podOn(b, 'exit');
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod.id,
      config: {
        metadata: { name: 'x', attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command: ['sh', '-c', 'sleep 0.5; exit 3'],
        log_path: 'x.log',
      } as never,
      sandbox_config: pod.config as never,
    });
    await b.runtime.StartContainer({ container_id: id });
    const s = await until(async () => {
      const st = (await b.runtime.ContainerStatus({ container_id: id })).status!;
      return st.state === 'CONTAINER_EXITED' ? st : undefined;
    }, 10_000);
    assert.deepEqual([s.exit_code, s.reason], [3, 'Error']);
    assert.ok(
      !b.records().some((r) => r.msg === 'the shim of a running container died; following the container through the runtime'),
      'a shim that ends with its container is no death',
    );
    await expectPidfds(b, 0, 'the pidfd of the exited container’s shim is closed');
    await b.runtime.StopPodSandbox({ pod_sandbox_id: pod.id });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id });
  });

  it('without pidfds (BERTH_DISABLE_PIDFD=1), a dead shim is noticed in /proc', async () => {
    const b = await Berthd.start({ env: { BERTH_DISABLE_PIDFD: '1' } });
    cleanup.push(() => b.dispose());
    const pod = await podOn(b, 'proc');
    const a = await sleeper(b, pod, 'a');
    await expectPidfds(b, 0, 'no pidfd is held for the shim');
    assert.equal(await killShimThenContainer(b, a), 'proc');
    await b.runtime.StopPodSandbox({ pod_sandbox_id: pod.id });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id });
  });
});
