/**
 * The relist suite: the cost of kubelet's PLEG relist in isolation. N kubelet-like pods
 * (kubelet.ts, two containers each) are started and left running; nothing else happens.
 * Then R relists are timed back to back, as the churn suite's PLEG makes them
 * (ListPodSandbox, ListContainers, then PodSandboxStatus of every pod and ContainerStatus
 * of every container, all at once), and then S status calls one after the other (each
 * RPC's own latency, with no queue in front of it). The churn suite times the same calls
 * while pods come and go; the difference between the two is the waiting behind other work.
 */
import { containerdAvailable } from './containerd.js';
import { RpcTimes, kubeletPod, withRuntime, type RuntimeName } from './kubelet.js';
import { median, out, percentile, type SuiteContext } from './suite.js';

export interface RelistOptions {
  pods: number;
  relists: number;
  /** Status calls one at a time (pod and container alternately), twice this many. */
  serial: number;
}

const ORDER = [
  'relist',
  'ListPodSandbox',
  'ListContainers',
  'PodSandboxStatus',
  'ContainerStatus',
  'serial PodSandboxStatus',
  'serial ContainerStatus',
  'daemon CPU per relist call',
  'daemon CPU per serial status call',
];

export async function relistSuite(ctx: SuiteContext, o: RelistOptions): Promise<void> {
  out(
    `relist: ${o.pods} kubelet-like pods (2 containers each) running idle; ${o.relists} PLEG relists back to back, then ${o.serial} status calls one at a time`,
  );
  const plan: Array<[RuntimeName, string]> = [];
  if (ctx.runBerth) plan.push(['berth', '10.191.0.0/24']);
  if (ctx.runContainerd) {
    if (containerdAvailable()) plan.push(['containerd', '10.192.0.0/24']);
    else out('containerd: not installed; berth alone');
  }
  const res = new Map<RuntimeName, RpcTimes>();
  for (const [name, subnet] of plan) {
    await withRuntime(ctx, name, subnet, async (rt) => {
      const c = rt.clients.runtime;
      const pods: string[] = [];
      for (let k = 0; k < o.pods; k++) {
        const pod = kubeletPod(rt.dirs, `relist-${k}`, rt.image);
        const { pod_sandbox_id: podId } = await c.RunPodSandbox({ config: pod.config });
        pods.push(podId);
        for (const config of pod.containers) {
          const { container_id: id } = await c.CreateContainer({ pod_sandbox_id: podId, config, sandbox_config: pod.config });
          await c.StartContainer({ container_id: id });
        }
      }
      await new Promise((r) => setTimeout(r, 1000));
      const t = new RpcTimes();
      const relist = async (): Promise<void> => {
        const items = (await t.time('ListPodSandbox', () => c.ListPodSandbox({}))).items;
        const ctrs = (await t.time('ListContainers', () => c.ListContainers({}))).containers;
        await Promise.all([
          ...items.map((p) => t.time('PodSandboxStatus', () => c.PodSandboxStatus({ pod_sandbox_id: p.id }))),
          ...ctrs.map((ct) => t.time('ContainerStatus', () => c.ContainerStatus({ container_id: ct.id }))),
        ]);
      };
      for (let i = 0; i < 5; i++) await relist(); // warm-up
      t.by.clear();
      // The daemon's CPU per call (its own threads; 10 ms ticks, so over many calls) holds when other work loads the machine.
      const sampler = rt.sampler();
      sampler.reset();
      const cpu0 = sampler.sample().cpu.daemon;
      for (let i = 0; i < o.relists; i++) await t.time('relist', relist);
      const cpu1 = sampler.sample().cpu.daemon;
      const ctrs = (await c.ListContainers({})).containers;
      for (let i = 0; i < o.serial; i++) {
        await t.time('serial PodSandboxStatus', () => c.PodSandboxStatus({ pod_sandbox_id: pods[i % pods.length]! }));
        await t.time('serial ContainerStatus', () => c.ContainerStatus({ container_id: ctrs[i % ctrs.length]!.id }));
      }
      const cpu2 = sampler.sample().cpu.daemon;
      const calls = o.relists * (2 + pods.length + ctrs.length);
      t.add('daemon CPU per relist call', ((cpu1 - cpu0) * 1000) / calls);
      t.add('daemon CPU per serial status call', ((cpu2 - cpu1) * 1000) / (2 * o.serial));
      res.set(name, t);
      for (const ct of ctrs) await c.StopContainer({ container_id: ct.id, timeout: 0 });
      for (const p of pods) {
        await c.StopPodSandbox({ pod_sandbox_id: p });
        await c.RemovePodSandbox({ pod_sandbox_id: p });
      }
    });
  }
  const names = [...res.keys()];
  out(`${'figure (p50 / p99 ms)'.padEnd(28)}${names.map((n) => n.padStart(18)).join('')}`);
  for (const fig of ORDER) {
    const cells = names.map((n) => {
      const xs = res.get(n)!.get(fig);
      return (xs.length ? `${median(xs).toFixed(2)} / ${percentile(xs, 99).toFixed(2)}` : '-').padStart(18);
    });
    out(`${fig.padEnd(28)}${cells.join('')}`);
  }
}
