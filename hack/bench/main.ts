/**
 * berth's benchmark. Each figure is the median of several runs, measured through the
 * CRI socket exactly as kubelet would call it; where containerd is installed the same
 * harness drives it and the ratio berth/containerd is printed.
 *
 * Suites:
 * - pull (suite-pull.ts): cold pull throughput of a large multi-layer image from a local registry
 *   (5 layers of 40 MB incompressible data by default; "cold" = the image and all its
 *   blobs and snapshots removed before each run), and the daemon's CPU seconds per 100 MB
 *   over the timed pulls (all its threads and the children it reaped, from
 *   /proc/<pid>/stat): a figure that holds when other work loads the machine.
 * - pods: RunPodSandbox latency and StopPodSandbox+RemovePodSandbox latency (timed
 *   together) over N pods created one after the other (after one warm-up pod), each on a
 *   bridge + host-local + portmap network of its own (a private subnet, a bridge named
 *   for the run, deleted at the end); and memory: berthd's RSS idle and with the N pods
 *   running, against containerd's RSS plus its runc v2 shims and pause processes. For
 *   containerd the sandbox image is built offline (Debian's static catatonit in pause
 *   mode) and pushed to the local registry, then pulled before anything is timed.
 * - containers: one pod on a bridge network of the run's own, the busybox test image
 *   pulled, one warm-up container (created, started, exec'd, stopped, removed; not
 *   counted), then N containers (`sleep 1000`, named c1..cN, logs under the pod's
 *   log_directory) created and started one after the other, CreateContainer and
 *   StartContainer timed separately; M ExecSync(["true"]) in c1; then each container
 *   StopContainer(timeout 0)+RemoveContainer (timed together). Memory is sampled with
 *   the pod alone and with the N containers running: berthd + its conmon processes (one
 *   per container, reparented to init, found by berthd's temp dir on their command
 *   line), against containerd + its runc v2 shims (one per pod in containerd 1.6) and
 *   pause process. The containers' own processes (sleep) are never counted.
 * - streaming (suite-streaming.ts): Exec RPC to the first output byte over SPDY; 20
 *   concurrent port-forward transfers of 10 MB over one session.
 * - metrics (suite-metrics.ts): with 100 running containers, ListPodSandboxMetrics and
 *   /metrics/cadvisor and /metrics scrape latency, idle CPU and RSS; RSS and per-RPC
 *   latency with tracing off and on (berth only).
 *
 * - relist (suite-relist.ts): the PLEG relist of N idle pods in isolation (--churn-pods).
 * - lifecycle, churn (and soak): see suite-lifecycle.ts and suite-churn.ts; their figures
 *   are also written to --results DIR (default bench/results: latest.json, .md, .svg).
 *
 * Usage: node dist/hack/bench/main.js [--suite pull,pods,containers,lifecycle,churn,relist,streaming,metrics | --only-pull | --only-pods]
 *          [--runs N] [--layers N] [--layer-mb N] [--pods N] [--containers N] [--execs N]
 *          [--only berth|containerd] [--profile DIR]
 *          [--lifecycle-pods N] [--churn-pods N] [--churn-seconds T] [--soak-minutes N] [--results DIR]
 */
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_PATH, RegistryPusher, buildImage, buildLayer, pushFixtures } from '../test-images/oci.js';
import { Berthd } from '../../test/helpers/berthd.js';
import type { CriClients } from '../../test/helpers/cri-client.js';
import { startRegistry } from '../../test/helpers/registry.js';
import { childrenOf, containerdAvailable, processes, startContainerd } from './containerd.js';
import { newResults, writeResults } from './results.js';
import { churnSuite } from './suite-churn.js';
import { lifecycleSuite } from './suite-lifecycle.js';
import { metricsSuite } from './suite-metrics.js';
import { relistSuite } from './suite-relist.js';
import { pullSuite } from './suite-pull.js';
import { streamingSuite } from './suite-streaming.js';
import { label, median, ms, out, percentile, rssKiB, sleep, type SuiteContext } from './suite.js';

const { values } = parseArgs({
  options: {
    /** Comma-separated: pull, pods, containers, lifecycle, churn, streaming, metrics (default all). */
    suite: { type: 'string', default: 'pull,pods,containers,lifecycle,churn,streaming,metrics' },
    'only-pull': { type: 'boolean', default: false },
    'only-pods': { type: 'boolean', default: false },
    runs: { type: 'string', default: '5' },
    layers: { type: 'string', default: '5' },
    'layer-mb': { type: 'string', default: '40' },
    /** Seconds after the last timed pull before the daemon's RSS is taken again (0: no memory figures). */
    'pull-settle-seconds': { type: 'string', default: '60' },
    /** Pods created (and timed) per runtime in the pods suite. */
    pods: { type: 'string', default: '20' },
    /** Containers created (and timed) per runtime in the containers suite. */
    containers: { type: 'string', default: '20' },
    /** ExecSync calls (timed) in one container in the containers suite. */
    execs: { type: 'string', default: '20' },
    only: { type: 'string' },
    /** Write a V8 CPU profile of berthd into this directory. */
    profile: { type: 'string' },
    /** Pods timed per runtime in the lifecycle suite. */
    'lifecycle-pods': { type: 'string', default: '10' },
    /** Pods at once in the churn suite, and how long it runs. */
    'churn-pods': { type: 'string', default: '10' },
    'churn-seconds': { type: 'string', default: '120' },
    /** Soak mode: the churn alone, for this many minutes, RSS printed at each minute. */
    'soak-minutes': { type: 'string' },
    /** Where the lifecycle and churn figures are written (latest.json, .md, .svg). */
    results: { type: 'string', default: 'bench/results' },
  },
});
const SUITES = ['pull', 'pods', 'containers', 'lifecycle', 'churn', 'relist', 'streaming', 'metrics'] as const;
type Suite = (typeof SUITES)[number];
if (values['only-pull'] && values['only-pods']) throw new Error('--only-pull and --only-pods exclude each other (use --suite pull,pods)');
const soakMinutes = values['soak-minutes'] === undefined ? undefined : Number(values['soak-minutes']);
if (soakMinutes !== undefined && !(soakMinutes >= 1 && Number.isInteger(soakMinutes)))
  throw new Error(`--soak-minutes must be a positive integer, not "${values['soak-minutes']}"`);
const positive = (name: 'lifecycle-pods' | 'churn-pods' | 'churn-seconds'): number => {
  const n = Number(values[name]);
  if (!(n >= 1 && Number.isInteger(n))) throw new Error(`--${name} must be a positive integer, not "${values[name]}"`);
  return n;
};
const suites = new Set<Suite>(
  soakMinutes !== undefined
    ? ['churn']
    : values['only-pull']
      ? ['pull']
      : values['only-pods']
        ? ['pods']
        : values.suite
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean)
            .map((s) => {
              if (!(SUITES as readonly string[]).includes(s)) throw new Error(`unknown suite "${s}" (known: ${SUITES.join(', ')})`);
              return s as Suite;
            }),
);
if (values.only !== undefined && values.only !== 'berth' && values.only !== 'containerd')
  throw new Error(`--only takes berth or containerd, not "${values.only}"`);
const runs = Number(values.runs);
const layerCount = Number(values.layers);
const layerBytes = Number(values['layer-mb']) * 1024 * 1024;
const pullSettle = Number(values['pull-settle-seconds']);
if (!(pullSettle >= 0 && Number.isInteger(pullSettle))) throw new Error(`--pull-settle-seconds must be a whole number, not "${values['pull-settle-seconds']}"`);
const podCount = Number(values.pods);
if (!(podCount >= 1 && Number.isInteger(podCount))) throw new Error(`--pods must be a positive integer, not "${values.pods}"`);
const containerCount = Number(values.containers);
if (!(containerCount >= 1 && Number.isInteger(containerCount))) throw new Error(`--containers must be a positive integer, not "${values.containers}"`);
const execCount = Number(values.execs);
if (!(execCount >= 1 && Number.isInteger(execCount))) throw new Error(`--execs must be a positive integer, not "${values.execs}"`);
const runBerth = values.only !== 'containerd';
const runContainerd = values.only !== 'berth';
const berthNodeArgs = values.profile ? { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${values.profile}`] } : {};

/** Prints a latency ratio containerd/berth (above 1: berth faster) for two sets of samples. */
function faster(what: string, b: number[], c: number[]): void {
  const r = median(c) / median(b);
  const verdict = r >= 1 ? `berth ${r.toFixed(2)}x faster` : `berth ${(1 / r).toFixed(2)}x slower`;
  out(`${what} median: containerd/berth = ${median(c).toFixed(1)} / ${median(b).toFixed(1)} ms = ${r.toFixed(2)}  (${verdict})`);
}

// ---------------------------------------------------------------------------------------
// Pod sandboxes

/** A bridge network in a temp dir: conflist, host-local data dir, pod log dir. */
interface BenchNet {
  dir: string;
  confDir: string;
  logDir: string;
  bridge: string;
  subnet: string;
  /** IPs host-local still holds. */
  allocated(): string[];
  /** Deletes the bridge and the temp dir. */
  dispose(): void;
}

function benchNet(runtime: string, subnet: string): BenchNet {
  const tag = randomBytes(3).toString('hex');
  const dir = mkdtempSync(join(tmpdir(), `berth-bench-net-${runtime}-`));
  const confDir = join(dir, 'net.d');
  const logDir = join(dir, 'logs');
  const dataDir = join(dir, 'ipam');
  mkdirSync(confDir);
  mkdirSync(logDir);
  // "bnch" + 6 hex digits: unique per run, well under the 15 characters of IFNAMSIZ.
  const bridge = `bnch${tag}`;
  const name = `berth-bench-${tag}`;
  const conf = {
    cniVersion: '1.0.0',
    name,
    plugins: [
      {
        type: 'bridge',
        bridge,
        isGateway: true,
        ipMasq: false,
        hairpinMode: true,
        ipam: { type: 'host-local', dataDir, ranges: [[{ subnet }]], routes: [{ dst: '0.0.0.0/0' }] },
      },
      { type: 'portmap', capabilities: { portMappings: true } },
    ],
  };
  writeFileSync(join(confDir, '10-bench.conflist'), JSON.stringify(conf, null, 2));
  return {
    dir,
    confDir,
    logDir,
    bridge,
    subnet,
    allocated() {
      const d = join(dataDir, name);
      return existsSync(d) ? readdirSync(d).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
    },
    dispose() {
      try {
        execFileSync('ip', ['link', 'del', bridge], { stdio: 'ignore' });
      } catch {
        // never created (no pod ran), or already gone
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Memory of a runtime with its helper processes, in KiB. */
interface Mem {
  rss: number;
  pss: number;
  /** How the total is made up, for the printout. */
  detail: string;
}

/** Proportional set size in KiB: shared pages (the shims' common text) split between their users. */
function pssKiB(pid: number): number {
  try {
    return Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

const mib = (kib: number): string => `${(kib / 1024).toFixed(1)} MiB`;

function sumMem(pids: number[]): { rss: number; pss: number } {
  return pids.reduce((a, p) => ({ rss: a.rss + rssKiB(p), pss: a.pss + pssKiB(p) }), { rss: 0, pss: 0 });
}

function berthMem(pid: number): Mem {
  const kids = childrenOf(pid);
  const d = sumMem([pid]);
  const k = sumMem(kids);
  return { rss: d.rss + k.rss, pss: d.pss + k.pss, detail: `berthd ${mib(d.rss)}; ${kids.length} child processes` + (kids.length ? ` ${mib(k.rss)}` : '') };
}

function containerdMem(pid: number, shims: number[]): Mem {
  const pauses = shims.flatMap((s) => childrenOf(s));
  const d = sumMem([pid]);
  const s = sumMem(shims);
  const p = sumMem(pauses);
  return {
    rss: d.rss + s.rss + p.rss,
    pss: d.pss + s.pss + p.pss,
    detail: `containerd ${mib(d.rss)} + ${shims.length} shims ${mib(s.rss)} + ${pauses.length} pause ${mib(p.rss)}`,
  };
}

interface PodFigures {
  /** RunPodSandbox latencies, ms. */
  run: number[];
  /** StopPodSandbox+RemovePodSandbox latencies, ms. */
  stopRemove: number[];
  /** The StopPodSandbox part of each, ms. */
  stop: number[];
  idle: Mem;
  loaded: Mem;
}

/** kubelet's namespace options for an ordinary pod and its containers (no shared PID namespace). */
const KUBELET_NAMESPACES = { network: 'POD', pid: 'CONTAINER', ipc: 'POD' };

function podConfig(i: number, logDir: string): Record<string, unknown> {
  return {
    metadata: { name: `bench-${i}`, namespace: 'bench', uid: randomUUID(), attempt: 0 },
    hostname: `bench-${i}`,
    log_directory: logDir,
    labels: { app: 'berth-bench' },
    // What kubelet sends for a pod without shareProcessNamespace.
    linux: { security_context: { namespace_options: KUBELET_NAMESPACES } },
  };
}

/** Stops and removes every pod the runtime lists (clean-up after a failure). */
async function removeAllPods(c: CriClients): Promise<void> {
  for (const p of (await c.runtime.ListPodSandbox({})).items) {
    await c.runtime.StopPodSandbox({ pod_sandbox_id: p.id });
    await c.runtime.RemovePodSandbox({ pod_sandbox_id: p.id });
  }
}

/**
 * One warm-up pod (not counted), then `podCount` pods created one after the other and
 * each timed, memory sampled with all of them running, then each stopped and removed
 * (timed together). Fails unless the runtime lists no pod at the end.
 */
async function podRuns(name: string, c: CriClients, net: BenchNet, mem: () => Mem, idle: Mem): Promise<PodFigures> {
  const warm = (await c.runtime.RunPodSandbox({ config: podConfig(0, net.logDir) })).pod_sandbox_id;
  await c.runtime.StopPodSandbox({ pod_sandbox_id: warm });
  await c.runtime.RemovePodSandbox({ pod_sandbox_id: warm });

  const ids: string[] = [];
  const run: number[] = [];
  for (let i = 1; i <= podCount; i++) {
    const t0 = process.hrtime.bigint();
    const { pod_sandbox_id: id } = await c.runtime.RunPodSandbox({ config: podConfig(i, net.logDir) });
    run.push(ms(t0));
    ids.push(id);
  }
  const ready = (await c.runtime.ListPodSandbox({ filter: { state: { state: 'SANDBOX_READY' } } })).items.length;
  if (ready !== podCount) throw new Error(`${name}: ${ready} pods ready, expected ${podCount}`);
  if (net.allocated().length !== podCount) throw new Error(`${name}: host-local holds ${net.allocated().length} IPs for ${podCount} pods`);
  // Let allocations settle (Go's and V8's background work) before sampling.
  await sleep(1000);
  const loaded = mem();

  const stopRemove: number[] = [];
  const stop: number[] = [];
  for (const id of ids) {
    const t0 = process.hrtime.bigint();
    await c.runtime.StopPodSandbox({ pod_sandbox_id: id });
    stop.push(ms(t0));
    await c.runtime.RemovePodSandbox({ pod_sandbox_id: id });
    stopRemove.push(ms(t0));
  }
  const left = (await c.runtime.ListPodSandbox({})).items;
  if (left.length > 0) throw new Error(`${name}: ListPodSandbox still lists ${left.map((p) => p.id).join(', ')}`);
  if (net.allocated().length > 0) throw new Error(`${name}: host-local still holds ${net.allocated().join(', ')}`);
  return { run, stopRemove, stop, idle, loaded };
}

function latencyLine(name: string, what: string, xs: number[], extra = '', unit = 'pods'): string {
  const f = (x: number): string => x.toFixed(1);
  return `${label(name)} ${what}: median ${f(median(xs))} ms  (${xs.length} ${unit}: min ${f(Math.min(...xs))}, p90 ${f(percentile(xs, 90))}, max ${f(Math.max(...xs))} ms${extra})`;
}

function printPods(name: string, f: PodFigures): void {
  out(latencyLine(name, 'RunPodSandbox', f.run));
  const removeOnly = f.stopRemove.map((x, i) => x - f.stop[i]!);
  out(
    latencyLine(
      name,
      'StopPodSandbox+RemovePodSandbox',
      f.stopRemove,
      `; of which Stop median ${median(f.stop).toFixed(1)}, Remove ${median(removeOnly).toFixed(1)} ms`,
    ),
  );
  out(`${label(name)} RSS idle: ${mib(f.idle.rss)}  (${f.idle.detail})`);
  out(`${label(name)} RSS with ${podCount} pods: ${mib(f.loaded.rss)}, PSS ${mib(f.loaded.pss)}  (${f.loaded.detail})`);
}

/** The sandbox image containerd needs: Debian's static catatonit in pause mode, built offline (pushed once per run). */
let pausePushed: Promise<string> | undefined;
function pushPauseImage(registryHost: string): Promise<string> {
  pausePushed ??= pushPauseImageOnce(registryHost);
  return pausePushed;
}

async function pushPauseImageOnce(registryHost: string): Promise<string> {
  const catatonit = '/usr/bin/catatonit';
  if (!existsSync(catatonit)) throw new Error(`${catatonit} is missing: install Debian's catatonit (hack/install.sh)`);
  const layer = await buildLayer([{ path: 'catatonit', type: 'file', mode: 0o755, content: readFileSync(catatonit) }], 'gzip');
  const image = buildImage({
    layers: [layer],
    config: { Entrypoint: ['/catatonit', '-P'], Env: [`PATH=${DEFAULT_PATH}`], Labels: { 'org.berth.bench': 'pause' } },
  });
  const pusher = new RegistryPusher(registryHost);
  try {
    await pusher.pushImage('pause', image, ['3.9']);
  } finally {
    pusher.close();
  }
  return `${registryHost}/pause:3.9`;
}

async function podsSuite(registryHost: string): Promise<void> {
  const figures: Partial<Record<'berth' | 'containerd', PodFigures>> = {};
  out(`pod sandboxes: ${podCount} pods per runtime, created one after the other after one warm-up pod; bridge + host-local + portmap networks`);
  if (runBerth) {
    const net = benchNet('berth', '10.177.0.0/16');
    try {
      const config = `[cni]\nconf_dir = "${net.confDir}"\nbin_dirs = ["/usr/lib/cni"]\n`;
      const b = await Berthd.start({ logLevel: 'warn', config, ...berthNodeArgs });
      try {
        const pid = b.proc.pid!;
        const idle = berthMem(pid);
        figures.berth = await podRuns('berth', b.clients, net, () => berthMem(pid), idle);
      } catch (err) {
        await removeAllPods(b.clients).catch(() => undefined);
        throw new Error(`berth pods: ${(err as Error).message}\nberthd log:\n${b.logs().slice(-4000)}`, { cause: err });
      } finally {
        await b.dispose();
      }
    } finally {
      net.dispose();
    }
    printPods('berth', figures.berth);
  }
  if (runContainerd) {
    if (!containerdAvailable()) {
      out(`${label('containerd')} not installed: no comparison`);
    } else {
      const pause = await pushPauseImage(registryHost);
      const net = benchNet('containerd', '10.178.0.0/16');
      try {
        const ctr = await startContainerd(registryHost, { cniConfDir: net.confDir, sandboxImage: pause });
        try {
          const idle = containerdMem(ctr.pid, ctr.shimPids());
          // The sandbox image is pulled before anything is timed.
          await ctr.clients.image.PullImage({ image: { image: pause } });
          figures.containerd = await podRuns('containerd', ctr.clients, net, () => containerdMem(ctr.pid, ctr.shimPids()), idle);
        } catch (err) {
          await removeAllPods(ctr.clients).catch(() => undefined);
          throw new Error(`containerd pods: ${(err as Error).message}\ncontainerd log:\n${ctr.logs().slice(-4000)}`, { cause: err });
        } finally {
          await ctr.stop();
        }
      } finally {
        net.dispose();
      }
      printPods('containerd', figures.containerd);
    }
  }
  const { berth, containerd } = figures;
  if (berth && containerd) {
    out();
    faster('RunPodSandbox', berth.run, containerd.run);
    faster('StopPodSandbox+RemovePodSandbox', berth.stopRemove, containerd.stopRemove);
    const rss = containerd.loaded.rss / berth.loaded.rss;
    const pss = containerd.loaded.pss / berth.loaded.pss;
    out(
      `memory with ${podCount} pods: containerd+shims+pause / berthd = ${mib(containerd.loaded.rss)} / ${mib(berth.loaded.rss)} RSS = ${rss.toFixed(2)}x  (>1: berth uses less)`,
    );
    // PSS divides shared pages among all their users: the shims' common text among the shims (fair), but
    // also node's text among every node process on the machine, this harness included (flatters berthd).
    out(
      `  PSS ${mib(containerd.loaded.pss)} / ${mib(berth.loaded.pss)} = ${pss.toFixed(2)}x  (berthd's PSS shares node's pages with other node processes, this harness included)`,
    );
    const perPod = (f: PodFigures): number => (f.loaded.rss - f.idle.rss) / podCount;
    out(
      `memory per pod (RSS with ${podCount} pods - idle, / ${podCount}): berth ${perPod(berth).toFixed(0)} KiB, containerd ${perPod(containerd).toFixed(0)} KiB`,
    );
  }
}

// ---------------------------------------------------------------------------------------
// Containers

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

/** Stops and removes every container, then every pod, the runtime lists (clean-up after a failure). */
async function removeAllContainersAndPods(c: CriClients): Promise<void> {
  for (const ct of (await c.runtime.ListContainers({})).containers) {
    await c.runtime.StopContainer({ container_id: ct.id, timeout: 0 }).catch(() => undefined);
    await c.runtime.RemoveContainer({ container_id: ct.id }).catch(() => undefined);
  }
  await removeAllPods(c);
}

/**
 * One pod; one warm-up container (not counted); `containerCount` containers created and
 * started one after the other, each call timed; memory with all of them running;
 * `execCount` ExecSync in the first; then each stopped (timeout 0) and removed (timed
 * together); then the pod. Fails unless the runtime lists no container and no pod at the end.
 */
async function containerRuns(name: string, c: CriClients, net: BenchNet, image: string, mem: () => CtrMem): Promise<ContainerFigures> {
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

async function containersSuite(registryHost: string): Promise<void> {
  const figures: Partial<Record<'berth' | 'containerd', ContainerFigures>> = {};
  out(
    `containers: one pod, 1 warm-up + ${containerCount} containers per runtime (busybox, sleep 1000) created and started one after the other; ${execCount} ExecSync ["true"] in c1; StopContainer(timeout 0)+RemoveContainer each`,
  );
  const fx = await pushFixtures(registryHost);
  const image = fx.busybox.ref;
  if (runBerth) {
    const net = benchNet('berth', '10.197.0.0/24');
    try {
      const config = `[cni]\nconf_dir = "${net.confDir}"\nbin_dirs = ["/usr/lib/cni"]\n`;
      const b = await Berthd.start({ logLevel: 'warn', config, ...berthNodeArgs });
      try {
        const pid = b.proc.pid!;
        await b.clients.image.PullImage({ image: { image } });
        figures.berth = await containerRuns('berth', b.clients, net, image, () => berthCtrMem(pid, b.dir));
      } catch (err) {
        await removeAllContainersAndPods(b.clients).catch(() => undefined);
        throw new Error(`berth containers: ${(err as Error).message}\nberthd log:\n${b.logs().slice(-4000)}`, { cause: err });
      } finally {
        await b.dispose();
      }
    } finally {
      net.dispose();
    }
    printContainers('berth', figures.berth);
  }
  if (runContainerd) {
    if (!containerdAvailable()) {
      out(`${label('containerd')} not installed: no comparison`);
    } else {
      const pause = await pushPauseImage(registryHost);
      const net = benchNet('containerd', '10.198.0.0/24');
      try {
        const ctr = await startContainerd(registryHost, { cniConfDir: net.confDir, sandboxImage: pause });
        try {
          await ctr.clients.image.PullImage({ image: { image: pause } });
          await ctr.clients.image.PullImage({ image: { image } });
          figures.containerd = await containerRuns('containerd', ctr.clients, net, image, () => containerdCtrMem(ctr.pid, ctr.shimPids()));
        } catch (err) {
          await removeAllContainersAndPods(ctr.clients).catch(() => undefined);
          throw new Error(`containerd containers: ${(err as Error).message}\ncontainerd log:\n${ctr.logs().slice(-4000)}`, { cause: err });
        } finally {
          await ctr.stop();
        }
      } finally {
        net.dispose();
      }
      printContainers('containerd', figures.containerd);
    }
  }
  const { berth, containerd } = figures;
  if (berth && containerd) {
    out();
    faster('CreateContainer', berth.create, containerd.create);
    faster('StartContainer', berth.start, containerd.start);
    faster('Create+Start', createStart(berth), createStart(containerd));
    faster('ExecSync ["true"]', berth.exec, containerd.exec);
    faster('StopContainer(0)+RemoveContainer', berth.stopRemove, containerd.stopRemove);
    out(
      '  (the work is split differently: berth runs `runc create` under conmon in CreateContainer, containerd 1.6 only prepares' +
        ' metadata and snapshot there and creates shim task + runc container in StartContainer; its StopContainer also deletes the task.' +
        ' Create+Start and Stop+Remove compare like with like)',
    );
    const rss = containerd.loaded.rss / berth.loaded.rss;
    const pss = containerd.loaded.pss / berth.loaded.pss;
    out(
      `memory with ${containerCount} containers in one pod: containerd+shim+pause / berthd+conmons = ${mib(containerd.loaded.rss)} / ${mib(berth.loaded.rss)} RSS = ${rss.toFixed(2)}x  (>1: berth uses less)`,
    );
    out(
      `  PSS ${mib(containerd.loaded.pss)} / ${mib(berth.loaded.pss)} = ${pss.toFixed(2)}x  (berthd's PSS shares node's pages with other node processes, this harness included)`,
    );
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

// ---------------------------------------------------------------------------------------

const registry = await startRegistry();
try {
  const results = newResults(process.argv.slice(2));
  const suiteCtx: SuiteContext = {
    registryHost: registry.host,
    runs,
    runBerth,
    runContainerd,
    berthOptions: berthNodeArgs,
    net: benchNet,
    pauseImage: () => pushPauseImage(registry.host),
  };
  if (suites.has('pull')) results.pull = await pullSuite(suiteCtx, layerCount, layerBytes, pullSettle);
  if (suites.has('pull') && suites.has('pods')) out();
  if (suites.has('pods')) await podsSuite(registry.host);
  if (suites.has('containers') && (suites.has('pull') || suites.has('pods'))) out();
  if (suites.has('containers')) await containersSuite(registry.host);
  if (suites.has('relist')) {
    const ctx = { registryHost: registry.host, runBerth, runContainerd, berthNodeArgs, benchNet, pushPauseImage, out };
    await relistSuite(ctx, { pods: positive('churn-pods'), relists: 100, serial: 500 });
  }
  if (suites.has('lifecycle') || suites.has('churn')) {
    const ctx = { registryHost: registry.host, runBerth, runContainerd, berthNodeArgs, benchNet, pushPauseImage, out };
    if (suites.has('lifecycle')) {
      if (suites.size > 1) out();
      results.lifecycle = await lifecycleSuite(ctx, positive('lifecycle-pods'), 3);
    }
    if (suites.has('churn')) {
      if (suites.size > 1) out();
      const seconds = soakMinutes !== undefined ? soakMinutes * 60 : positive('churn-seconds');
      results.churn = await churnSuite(ctx, { pods: positive('churn-pods'), seconds, perMinute: soakMinutes !== undefined });
    }
  }
  if (results.pull || results.lifecycle || results.churn) out(`\nresults: ${writeResults(values.results, results).join(', ')}`);
  // Suites in files of their own (suite-*.ts) are given the harness through suiteCtx.
  for (const [name, suite] of [
    ['streaming', streamingSuite],
    ['metrics', metricsSuite],
  ] as const) {
    if (!suites.has(name)) continue;
    out();
    await suite(suiteCtx);
  }
} finally {
  await registry.stop();
}
