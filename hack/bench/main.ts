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
 * - pods (suite-pods.ts): RunPodSandbox and StopPodSandbox+RemovePodSandbox latency over N
 *   pods one after the other, each on a bridge + host-local + portmap network of the run's
 *   own; berthd's RSS idle and with the N pods, against containerd + shims + pause.
 * - containers (suite-containers.ts): N containers in one pod created and started one after
 *   the other, M ExecSync in the first, then each stopped and removed; memory of berthd and
 *   its conmons against containerd, its shim and pause.
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
import { parseArgs } from 'node:util';
import { startRegistry } from '../../test/helpers/registry.js';
import { pushPauseImage } from './containerd.js';
import { newResults, writeResults } from './results.js';
import { churnSuite } from './suite-churn.js';
import { containersSuite } from './suite-containers.js';
import { lifecycleSuite } from './suite-lifecycle.js';
import { metricsSuite } from './suite-metrics.js';
import { podsSuite } from './suite-pods.js';
import { pullSuite } from './suite-pull.js';
import { relistSuite } from './suite-relist.js';
import { streamingSuite } from './suite-streaming.js';
import { bridgeNet, out, type SuiteContext } from './suite.js';

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

const registry = await startRegistry();
try {
  const results = newResults(process.argv.slice(2));
  const ctx: SuiteContext = {
    registryHost: registry.host,
    runs,
    runBerth,
    runContainerd,
    berthOptions: berthNodeArgs,
    net: bridgeNet,
    pauseImage: () => pushPauseImage(registry.host),
  };
  // A blank line between suites.
  let first = true;
  const gap = (): void => {
    if (!first) out();
    first = false;
  };
  if (suites.has('pull')) {
    gap();
    results.pull = await pullSuite(ctx, layerCount, layerBytes, pullSettle);
  }
  if (suites.has('pods')) {
    gap();
    await podsSuite(ctx, podCount);
  }
  if (suites.has('containers')) {
    gap();
    await containersSuite(ctx, { containerCount, execCount });
  }
  if (suites.has('relist')) {
    gap();
    await relistSuite(ctx, { pods: positive('churn-pods'), relists: 100, serial: 500 });
  }
  if (suites.has('lifecycle')) {
    gap();
    results.lifecycle = await lifecycleSuite(ctx, positive('lifecycle-pods'), 3);
  }
  if (suites.has('churn')) {
    gap();
    const seconds = soakMinutes !== undefined ? soakMinutes * 60 : positive('churn-seconds');
    results.churn = await churnSuite(ctx, { pods: positive('churn-pods'), seconds, perMinute: soakMinutes !== undefined });
  }
  if (results.pull || results.lifecycle || results.churn) out(`\nresults: ${writeResults(values.results, results).join(', ')}`);
  if (suites.has('streaming')) {
    gap();
    await streamingSuite(ctx);
  }
  if (suites.has('metrics')) {
    gap();
    await metricsSuite(ctx);
  }
} finally {
  await registry.stop();
}
