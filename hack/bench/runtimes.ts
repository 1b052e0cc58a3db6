/**
 * berthd and containerd as every suite starts them: on a bridge network of the run's own,
 * emptied and with the daemon's log attached when the suite fails, then stopped (which
 * checks that nothing of theirs is left behind) and their network deleted.
 */
import { Berthd } from '../../test/helpers/berthd.js';
import type { CriClients } from '../../test/helpers/cri-client.js';
import { startContainerd, type Containerd, type ContainerdOptions } from './containerd.js';
import type { SuiteContext, SuiteNet } from './suite.js';

/** Stops and removes every container and pod the runtime lists (clean-up after a failure). */
export async function removeEverything(c: CriClients): Promise<void> {
  for (const ct of (await c.runtime.ListContainers({})).containers) {
    await c.runtime.StopContainer({ container_id: ct.id, timeout: 0 }).catch(() => undefined);
    await c.runtime.RemoveContainer({ container_id: ct.id }).catch(() => undefined);
  }
  for (const p of (await c.runtime.ListPodSandbox({})).items) {
    await c.runtime.StopPodSandbox({ pod_sandbox_id: p.id }).catch(() => undefined);
    await c.runtime.RemovePodSandbox({ pod_sandbox_id: p.id }).catch(() => undefined);
  }
}

/** A suite's failure with the failing daemon's log attached. */
class RuntimeFailure extends Error {}

/**
 * The error a suite's failure is thrown as. One raised inside another runtime's callback
 * (the lifecycle suite nests both) is passed on as it is, not credited to the outer one.
 */
function failed(runtime: string, what: string, err: unknown, log: string): Error {
  if (err instanceof RuntimeFailure) return err;
  const daemon = runtime === 'berth' ? 'berthd' : runtime;
  return new RuntimeFailure(`${runtime}${what ? ` ${what}` : ''}: ${(err as Error).message}\n${daemon} log:\n${log.slice(-4000)}`, { cause: err });
}

/** Runs `fn` against a fresh berthd whose pods go on a bridge network on `subnet`; `what` names the suite in an error. */
export async function onBerthd<T>(ctx: SuiteContext, what: string, subnet: string, fn: (b: Berthd, net: SuiteNet) => Promise<T>): Promise<T> {
  const net = ctx.net('berth', subnet);
  try {
    const config = `[cni]\nconf_dir = "${net.confDir}"\nbin_dirs = ["/usr/lib/cni"]\n`;
    const b = await Berthd.start({ logLevel: 'warn', config, ...ctx.berthOptions });
    try {
      return await fn(b, net);
    } catch (err) {
      await removeEverything(b.clients).catch(() => undefined);
      throw failed('berth', what, err, b.logs());
    } finally {
      await b.dispose();
    }
  } finally {
    net.dispose();
  }
}

/** The same with a fresh containerd; its sandbox image is pulled before `fn`, so that nothing timed pulls it. */
export async function onContainerd<T>(
  ctx: SuiteContext,
  what: string,
  subnet: string,
  fn: (ctr: Containerd, net: SuiteNet) => Promise<T>,
  opts: Omit<ContainerdOptions, 'cniConfDir' | 'sandboxImage'> = {},
): Promise<T> {
  const pause = await ctx.pauseImage();
  const net = ctx.net('containerd', subnet);
  try {
    const ctr = await startContainerd(ctx.registryHost, { ...opts, cniConfDir: net.confDir, sandboxImage: pause });
    try {
      await ctr.clients.image.PullImage({ image: { image: pause } });
      return await fn(ctr, net);
    } catch (err) {
      await removeEverything(ctr.clients).catch(() => undefined);
      throw failed('containerd', what, err, ctr.logs());
    } finally {
      await ctr.stop();
    }
  } finally {
    net.dispose();
  }
}
