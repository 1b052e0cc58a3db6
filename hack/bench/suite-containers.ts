/**
 * The containers suite: one pod on a bridge network of the run's own, the busybox test
 * image pulled, one warm-up container (created, started, exec'd, stopped, removed; not
 * counted), then N containers (`sleep 1000`, named c1..cN, logs under the pod's
 * log_directory) created and started one after the other, CreateContainer and
 * StartContainer timed separately; M ExecSync(["true"]) in c1; then each container
 * StopContainer(timeout 0)+RemoveContainer (timed together). Memory is sampled with the pod
 * alone and with the N containers running: berthd + its conmon processes (one per
 * container, reparented to init, found by berthd's temp dir on their command line), against
 * containerd + its runc v2 shims (one per pod in containerd 1.6) and pause process. The
 * containers' own processes (sleep) are never counted.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { pushFixtures } from '../test-images/oci.js';
import type { CriClients } from '../../test/helpers/cri-client.js';
import { childrenOf, containerdAvailable, processes } from './containerd.js';
import { KUBELET_NAMESPACES } from './kubelet.js';
import { onBerthd, onContainerd } from './runtimes.js';
import { latencyLine, podConfig } from './suite-pods.js';
import { compare, compareMemory, label, median, mib, ms, out, sleep, sumMem, type Mem, type SuiteContext, type SuiteNet } from './suite.js';

export interface Counts {
  /** Containers created in the pod. */
  containerCount: number;
  /** ExecSync calls timed in the first. */
  execCount: number;
}

/** RSS and PSS of a group of processes, in KiB. */
interface Part {
  count: number;
  rss: number;
  pss: number;
}

/** Memory of a runtime running containers: the daemon, its shims, pause processes, anything else of its own. */
interface CtrMem extends Mem {
  daemon: Part;
  /** berth: one conmon per container; containerd: one runc v2 shim per pod. */
  shims: Part;
  /** containerd: the pod's pause process; berth has none (pinned namespaces). */
  pause: Part;
}

function part(pids: number[]): Part {
  return { count: pids.length, ...sumMem(pids) };
}

const isConmon = (cmd: string): boolean => basename(cmd.split(' ')[0]!) === 'conmon';

function parentOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return -1;
  }
}

/**
 * berthd + its conmon processes: conmon detaches (reparented to init), so they are found
 * by berthd's temp dir on their command line. berthd's own children, should it have any,
 * count too (none are expected).
 */
function berthCtrMem(pid: number, dir: string): CtrMem {
  const conmons = processes()
    .filter((p) => isConmon(p.cmd) && p.cmd.includes(dir))
    .map((p) => p.pid);
  const kids = childrenOf(pid).filter((k) => !conmons.includes(k));
  const daemon = part([pid]);
  const shims = part(conmons);
  const other = part(kids);
  const notInit = conmons.filter((p) => parentOf(p) !== 1).length;
  return {
    rss: daemon.rss + shims.rss + other.rss,
    pss: daemon.pss + shims.pss + other.pss,
    daemon,
    shims,
    pause: { count: 0, rss: 0, pss: 0 },
    detail:
      `berthd ${mib(daemon.rss)} + ${shims.count} conmon ${mib(shims.rss)}` +
      (notInit ? ` (${notInit} of them not children of init)` : '') +
      (kids.length ? ` + ${kids.length} other children of berthd ${mib(other.rss)}` : ''),
  };
}

/** containerd + its runc v2 shims + the pause processes under them; the containers' own processes are left out. */
function containerdCtrMem(pid: number, shimPids: number[]): CtrMem {
  const pauses = shimPids
    .flatMap((s) => childrenOf(s))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('catatonit');
      } catch {
        return false;
      }
    });
  const daemon = part([pid]);
  const shims = part(shimPids);
  const pause = part(pauses);
  return {
    rss: daemon.rss + shims.rss + pause.rss,
    pss: daemon.pss + shims.pss + pause.pss,
    daemon,
    shims,
    pause,
    detail: `containerd ${mib(daemon.rss)} + ${shims.count} shim ${mib(shims.rss)} + ${pause.count} pause ${mib(pause.rss)}`,
  };
}

interface ContainerFigures {
  /** CreateContainer latencies, ms. */
  create: number[];
  /** StartContainer latencies, ms. */
  start: number[];
  /** ExecSync(["true"]) latencies in one container, ms. */
  exec: number[];
  /** StopContainer(timeout 0)+RemoveContainer latencies, ms. */
  stopRemove: number[];
  /** The StopContainer part of each, ms. */
  stop: number[];
  /** With the pod running and no container. */
  podOnly: CtrMem;
  /** With the N containers running. */
  loaded: CtrMem;
}

function containerConfig(name: string, image: string): Record<string, unknown> {
  return {
    metadata: { name, attempt: 0 },
    image: { image },
    command: ['sleep', '1000'],
    log_path: `${name}.log`,
    labels: { app: 'berth-bench' },
    linux: { security_context: { namespace_options: KUBELET_NAMESPACES } },
  };
}

/**
 * One pod; one warm-up container (not counted); `containerCount` containers created and
 * started one after the other, each call timed; memory with all of them running;
 * `execCount` ExecSync in the first; then each stopped (timeout 0) and removed (timed
 * together); then the pod. Fails unless the runtime lists no container and no pod at the end.
 */
async function containerRuns(name: string, c: CriClients, net: SuiteNet, image: string, counts: Counts, mem: () => CtrMem): Promise<ContainerFigures> {
  const { containerCount, execCount } = counts;
  const podCfg = {
    ...podConfig(1, net.logDir),
    metadata: { name: 'bench-containers', namespace: 'bench', uid: randomUUID(), attempt: 0 },
    hostname: 'bench-containers',
  };
  const { pod_sandbox_id: pod } = await c.runtime.RunPodSandbox({ config: podCfg });
  const create = async (ctrName: string): Promise<string> =>
    (await c.runtime.CreateContainer({ pod_sandbox_id: pod, config: containerConfig(ctrName, image), sandbox_config: podCfg })).container_id;
  const exec = async (id: string): Promise<void> => {
    const r = await c.runtime.ExecSync({ container_id: id, cmd: ['true'], timeout: 10 });
    if (r.exit_code !== 0) throw new Error(`${name}: ExecSync ["true"] exited ${r.exit_code}: ${r.stderr.toString()}`);
  };

  // Warm-up: every call once (connections, JIT, runc's and conmon's pages in the page cache).
  const warm = await create('warmup');
  await c.runtime.StartContainer({ container_id: warm });
  await exec(warm);
  await c.runtime.StopContainer({ container_id: warm, timeout: 0 });
  await c.runtime.RemoveContainer({ container_id: warm });
  await sleep(1000);
  const podOnly = mem();

  const ids: string[] = [];
  const createMs: number[] = [];
  const startMs: number[] = [];
  for (let i = 1; i <= containerCount; i++) {
    let t0 = process.hrtime.bigint();
    const id = await create(`c${i}`);
    createMs.push(ms(t0));
    ids.push(id);
    t0 = process.hrtime.bigint();
    await c.runtime.StartContainer({ container_id: id });
    startMs.push(ms(t0));
  }
  const running = (await c.runtime.ListContainers({ filter: { state: { state: 'CONTAINER_RUNNING' } } })).containers;
  if (running.length !== containerCount) throw new Error(`${name}: ${running.length} containers running, expected ${containerCount}`);
  // Let allocations settle (Go's and V8's background work) before sampling.
  await sleep(1000);
  const loaded = mem();

  const execMs: number[] = [];
  for (let i = 0; i < execCount; i++) {
    const t0 = process.hrtime.bigint();
    await exec(ids[0]!);
    execMs.push(ms(t0));
  }

  const stopRemove: number[] = [];
  const stop: number[] = [];
  for (const id of ids) {
    const t0 = process.hrtime.bigint();
    await c.runtime.StopContainer({ container_id: id, timeout: 0 });
    stop.push(ms(t0));
    await c.runtime.RemoveContainer({ container_id: id });
    stopRemove.push(ms(t0));
  }
  const left = (await c.runtime.ListContainers({})).containers;
  if (left.length > 0) throw new Error(`${name}: ListContainers still lists ${left.map((x) => x.id).join(', ')}`);
  await c.runtime.StopPodSandbox({ pod_sandbox_id: pod });
  await c.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
  const pods = (await c.runtime.ListPodSandbox({})).items;
  if (pods.length > 0) throw new Error(`${name}: ListPodSandbox still lists ${pods.map((p) => p.id).join(', ')}`);
  if (net.allocated().length > 0) throw new Error(`${name}: host-local still holds ${net.allocated().join(', ')}`);
  return { create: createMs, start: startMs, exec: execMs, stopRemove, stop, podOnly, loaded };
}

const createStart = (f: ContainerFigures): number[] => f.create.map((x, i) => x + f.start[i]!);
const kib = (x: number): string => `${x.toFixed(0)} KiB`;

function printContainers(name: string, f: ContainerFigures): void {
  const containerCount = f.create.length;
  const unit = 'containers';
  out(latencyLine(name, 'CreateContainer', f.create, '', unit));
  out(latencyLine(name, 'StartContainer', f.start, '', unit));
  out(latencyLine(name, 'Create+Start', createStart(f), '', unit));
  out(latencyLine(name, 'ExecSync ["true"]', f.exec, '', 'calls in c1'));
  const removeOnly = f.stopRemove.map((x, i) => x - f.stop[i]!);
  out(
    latencyLine(
      name,
      'StopContainer(0)+RemoveContainer',
      f.stopRemove,
      `; of which Stop median ${median(f.stop).toFixed(1)}, Remove ${median(removeOnly).toFixed(1)} ms`,
      unit,
    ),
  );
  out(`${label(name)} memory, pod alone: RSS ${mib(f.podOnly.rss)}, PSS ${mib(f.podOnly.pss)}  (${f.podOnly.detail})`);
  out(
    `${label(name)} memory with ${containerCount} containers: RSS ${mib(f.loaded.rss)}, PSS ${mib(f.loaded.pss)}  (${f.loaded.detail}; the containers' own processes not counted)`,
  );
  const s = f.loaded.shims;
  if (name === 'berth') {
    if (s.count !== containerCount) out(`${label(name)} WARNING: ${s.count} conmon processes for ${containerCount} containers`);
    if (s.count) out(`${label(name)} RSS per shim (mean conmon VmRSS, one conmon per container): ${kib(s.rss / s.count)}, PSS ${kib(s.pss / s.count)}`);
  } else {
    if (s.count !== 1) out(`${label(name)} WARNING: ${s.count} runc v2 shims for one pod`);
    const p0 = f.podOnly;
    out(
      `${label(name)} per pod (runc v2 shim + pause; one shim serves all the pod's containers): pod alone RSS ${kib(p0.shims.rss + p0.pause.rss)}, PSS ${kib(p0.shims.pss + p0.pause.pss)};` +
        ` with ${containerCount} containers RSS ${kib(s.rss + f.loaded.pause.rss)}, PSS ${kib(s.pss + f.loaded.pause.pss)} (shim ${kib(s.rss)} RSS, i.e. ${kib(s.rss / containerCount)} per container)`,
    );
  }
}

export async function containersSuite(ctx: SuiteContext, counts: Counts): Promise<void> {
  const { containerCount, execCount } = counts;
  const figures: Partial<Record<'berth' | 'containerd', ContainerFigures>> = {};
  out(
    `containers: one pod, 1 warm-up + ${containerCount} containers per runtime (busybox, sleep 1000) created and started one after the other; ${execCount} ExecSync ["true"] in c1; StopContainer(timeout 0)+RemoveContainer each`,
  );
  const fx = await pushFixtures(ctx.registryHost);
  const image = fx.busybox.ref;
  if (ctx.runBerth) {
    figures.berth = await onBerthd(ctx, 'containers', '10.197.0.0/24', async (b, net) => {
      await b.clients.image.PullImage({ image: { image } });
      return containerRuns('berth', b.clients, net, image, counts, () => berthCtrMem(b.proc.pid!, b.dir));
    });
    printContainers('berth', figures.berth);
  }
  if (ctx.runContainerd && !containerdAvailable()) out(`${label('containerd')} not installed: no comparison`);
  else if (ctx.runContainerd) {
    figures.containerd = await onContainerd(ctx, 'containers', '10.198.0.0/24', async (ctr, net) => {
      await ctr.clients.image.PullImage({ image: { image } });
      return containerRuns('containerd', ctr.clients, net, image, counts, () => containerdCtrMem(ctr.pid, ctr.shimPids()));
    });
    printContainers('containerd', figures.containerd);
  }
  const { berth, containerd } = figures;
  if (berth && containerd) {
    out();
    compare('CreateContainer', berth.create, containerd.create);
    compare('StartContainer', berth.start, containerd.start);
    compare('Create+Start', createStart(berth), createStart(containerd));
    compare('ExecSync ["true"]', berth.exec, containerd.exec);
    compare('StopContainer(0)+RemoveContainer', berth.stopRemove, containerd.stopRemove);
    out(
      '  (the work is split differently: berth runs `runc create` under conmon in CreateContainer, containerd 1.6 only prepares' +
        ' metadata and snapshot there and creates shim task + runc container in StartContainer; its StopContainer also deletes the task.' +
        ' Create+Start and Stop+Remove compare like with like)',
    );
    compareMemory(`with ${containerCount} containers in one pod`, 'containerd+shim+pause / berthd+conmons', containerd.loaded, berth.loaded);
    // Per container: what N more containers in the same pod cost, daemon growth included.
    const perCtr = (f: ContainerFigures, k: 'rss' | 'pss'): number => (f.loaded[k] - f.podOnly[k]) / containerCount;
    out(
      `memory per container (with ${containerCount} - pod alone, / ${containerCount}): berth ${kib(perCtr(berth, 'rss'))} RSS, ${kib(perCtr(berth, 'pss'))} PSS;` +
        ` containerd ${kib(perCtr(containerd, 'rss'))} RSS, ${kib(perCtr(containerd, 'pss'))} PSS`,
    );
    const bs = berth.loaded.shims;
    const cs = containerd.loaded.shims;
    out(
      `shims: berth ${bs.count} conmon (one per container), mean ${kib(bs.rss / Math.max(1, bs.count))} RSS each;` +
        ` containerd ${cs.count} runc v2 shim (one per pod, serving all ${containerCount}) ${kib(cs.rss)} RSS + ${containerd.loaded.pause.count} pause ${kib(containerd.loaded.pause.rss)}` +
        ` (berth's shim cost grows per container, containerd's mostly per pod)`,
    );
  }
}
