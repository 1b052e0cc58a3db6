/**
 * Pods that share one PID namespace (namespace_options.pid POD): the infra process
 * (catatonit under conmon + runc) is PID 1, containers join it, and its death makes the
 * pod NOTREADY. Also pid TARGET (a container joining another's PID namespace).
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';
import { grpcError } from '../helpers/cri-client.js';

type Mode = 'POD' | 'CONTAINER' | 'NODE' | 'TARGET';

describe('pods sharing a PID namespace', function () {
  this.timeout(90_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  async function start(reuse?: Berthd): Promise<Berthd> {
    const b = await Berthd.start(reuse ? { reuse: { dir: reuse.dir } } : {});
    if (!reuse) cleanup.push(() => b.dispose());
    return b;
  }

  /** A pod on a bridge network of the test's own, with the given PID mode. */
  async function pod(b: Berthd, pid: Mode): Promise<string> {
    const net = testBridge(b, 'bp');
    const r = net.tag;
    cleanup.push(net.remove);
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({
      config: {
        metadata: { name: `p${r}`, namespace: 'test', uid: `u${r}`, attempt: 0 },
        hostname: `p${r}`,
        linux: { security_context: { namespace_options: { pid } } },
      },
    });
    return id;
  }

  async function container(b: Berthd, podId: string, name: string, command: string[], pid: Mode, targetId = ''): Promise<string> {
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: podId,
      config: {
        metadata: { name, attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command,
        linux: { security_context: { namespace_options: { pid, target_id: targetId } } },
      },
    });
    await b.runtime.StartContainer({ container_id: id });
    return id;
  }

  const exec = async (b: Berthd, id: string, cmd: string[]): Promise<string> => {
    const r = await b.runtime.ExecSync({ container_id: id, cmd, timeout: 10 });
    assert.equal(r.exit_code, 0, `${cmd.join(' ')}: ${r.stderr.toString()}`);
    return r.stdout.toString();
  };

  /** The infra process's pid, as runc knows it (its runtime id is the pod's id). */
  const infraPid = (b: Berthd, podId: string): number =>
    (JSON.parse(execFileSync('runc', ['--root', join(b.state, 'runtime', 'runc'), 'state', podId], { encoding: 'utf8' })) as { pid: number }).pid;

  async function podState(b: Berthd, podId: string, want: string): Promise<void> {
    await until(async () => ((await b.runtime.PodSandboxStatus({ pod_sandbox_id: podId })).status!.state === want ? true : undefined));
  }

  it('runs catatonit as PID 1 of the pod, unprivileged, and every container sees the others', async () => {
    const b = await start();
    const p = await pod(b, 'POD');
    const pid = infraPid(b, p);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    assert.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), /^\/catatonit\0-P\0$/);
    assert.match(status, /^Uid:\s+65535\s/m);
    assert.match(status, /^CapEff:\s+0+$/m);
    assert.match(status, /^NoNewPrivs:\s+1$/m);
    assert.match(status, /^Seccomp:\s+2$/m);
    // It lives in the pod's network namespace.
    assert.equal(
      execFileSync('readlink', [`/proc/${pid}/ns/net`], { encoding: 'utf8' }),
      execFileSync('stat', ['-L', '-c', 'net:[%i]', join(b.state, 'ns', p, 'net')], { encoding: 'utf8' }),
    );

    const a = await container(b, p, 'a', ['sleep', '1001'], 'POD');
    const c = await container(b, p, 'c', ['sleep', '1002'], 'POD');
    assert.equal(await exec(b, c, ['cat', '/proc/1/cmdline']), '/catatonit\0-P\0');
    const ps = await exec(b, c, ['ps', '-o', 'pid,args']);
    assert.match(ps, /sleep 1001/);
    assert.match(ps, /sleep 1002/);
    assert.match(ps, /^\s*1\s+\/catatonit -P$/m);
    // Stopping the pod stops the containers and the infra process.
    await b.runtime.StopPodSandbox({ pod_sandbox_id: p });
    for (const id of [a, c]) assert.equal((await b.runtime.ContainerStatus({ container_id: id })).status!.state, 'CONTAINER_EXITED');
    assert.throws(() => process.kill(pid, 0), /ESRCH/);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: p });
  });

  it('a pod whose infra process dies becomes NOTREADY, its containers die with it, and it still stops and goes cleanly', async () => {
    const b = await start();
    const p = await pod(b, 'POD');
    const a = await container(b, p, 'a', ['sleep', '1003'], 'POD');
    process.kill(infraPid(b, p), 'SIGKILL');
    await podState(b, p, 'SANDBOX_NOTREADY');
    // The container cannot outlive its PID namespace.
    await until(async () => ((await b.runtime.ContainerStatus({ container_id: a })).status!.state === 'CONTAINER_EXITED' ? true : undefined));
    assert.equal(
      (
        await grpcError(
          b.runtime.CreateContainer({
            pod_sandbox_id: p,
            config: { metadata: { name: 'late', attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['true'] },
          }),
        )
      ).code,
      status.FAILED_PRECONDITION,
    );
    await b.runtime.StopPodSandbox({ pod_sandbox_id: p });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: p });
  });

  it('survives a kill -9 of berthd; an infra death while berthd was down makes the pod NOTREADY', async () => {
    const b = await start();
    const live = await pod(b, 'POD');
    const dead = await pod(b, 'POD');
    const a = await container(b, live, 'a', ['sleep', '1004'], 'POD');
    await b.stop('SIGKILL');
    process.kill(infraPid(b, dead), 'SIGKILL');
    const b2 = await start(b);
    cleanup.push(() => b2.dispose());
    await podState(b2, live, 'SANDBOX_READY');
    await podState(b2, dead, 'SANDBOX_NOTREADY');
    assert.equal(await exec(b2, a, ['cat', '/proc/1/cmdline']), '/catatonit\0-P\0');
    // The live pod's infra is watched again after the restart.
    process.kill(infraPid(b2, live), 'SIGKILL');
    await podState(b2, live, 'SANDBOX_NOTREADY');
    for (const p of [live, dead]) await b2.runtime.RemovePodSandbox({ pod_sandbox_id: p });
  });

  it('a host-network, host-IPC pod can still share a PID namespace', async () => {
    const b = await start();
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const { pod_sandbox_id: p } = await b.runtime.RunPodSandbox({
      config: {
        metadata: { name: 'hostnet', namespace: 'test', uid: 'hn', attempt: 0 },
        linux: { security_context: { namespace_options: { network: 'NODE', ipc: 'NODE', pid: 'POD' } } },
      },
    });
    const pid = infraPid(b, p);
    assert.equal(
      execFileSync('readlink', [`/proc/${pid}/ns/net`], { encoding: 'utf8' }),
      execFileSync('readlink', ['/proc/self/ns/net'], { encoding: 'utf8' }),
    );
    const { container_id: a } = await b.runtime.CreateContainer({
      pod_sandbox_id: p,
      config: {
        metadata: { name: 'a', attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command: ['sleep', '1007'],
        linux: { security_context: { namespace_options: { network: 'NODE', ipc: 'NODE', pid: 'POD' } } },
      },
    });
    await b.runtime.StartContainer({ container_id: a });
    assert.equal(await exec(b, a, ['cat', '/proc/1/cmdline']), '/catatonit\0-P\0');
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: p });
  });

  it('pid TARGET joins another container’s PID namespace; pid POD needs a pod that shares one', async () => {
    const b = await start();
    const p = await pod(b, 'CONTAINER');
    const a = await container(b, p, 'a', ['sleep', '1005'], 'CONTAINER');
    const debug = await container(b, p, 'debug', ['sleep', '1006'], 'TARGET', a);
    assert.equal(await exec(b, debug, ['cat', '/proc/1/cmdline']), 'sleep\x001005\0');
    const missing = await grpcError(
      b.runtime.CreateContainer({
        pod_sandbox_id: p,
        config: {
          metadata: { name: 'x', attempt: 0 },
          image: { image: reg.fx.busybox.ref },
          linux: { security_context: { namespace_options: { pid: 'TARGET', target_id: 'f'.repeat(64) } } },
        },
      }),
    );
    assert.equal(missing.code, status.NOT_FOUND);
    const noShared = await grpcError(
      b.runtime.CreateContainer({
        pod_sandbox_id: p,
        config: {
          metadata: { name: 'y', attempt: 0 },
          image: { image: reg.fx.busybox.ref },
          linux: { security_context: { namespace_options: { pid: 'POD' } } },
        },
      }),
    );
    assert.equal(noShared.code, status.INVALID_ARGUMENT);
    assert.match(noShared.details, /no shared PID namespace/);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: p });
  });
});
