/**
 * berth's benchmark. Each figure is the median of several runs, measured through the
 * CRI socket exactly as kubelet would call it; where containerd is installed the same
 * harness drives it and the ratio berth/containerd is printed.
 *
 * Suites:
 * - pull: cold pull throughput of a large multi-layer image from a local registry
 *   (5 layers of 40 MB incompressible data by default; "cold" = the image and all its
 *   blobs and snapshots removed before each run).
 * - pods: RunPodSandbox latency and StopPodSandbox+RemovePodSandbox latency (timed
 *   together) over N pods created one after the other (after one warm-up pod), each on a
 *   bridge + host-local + portmap network of its own (a private subnet, a bridge named
 *   for the run, deleted at the end); and memory: berthd's RSS idle and with the N pods
 *   running, against containerd's RSS plus its runc v2 shims and pause processes. For
 *   containerd the sandbox image is built offline (Debian's static catatonit in pause
 *   mode) and pushed to the local registry, then pulled before anything is timed.
 *
 * Usage: node dist/hack/bench/main.js [--suite pull,pods | --only-pull | --only-pods]
 *          [--runs N] [--layers N] [--layer-mb N] [--pods N] [--only berth|containerd] [--profile DIR]
 */
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_PATH, RegistryPusher, buildImage, buildLayer, pushRandomImage } from '../test-images/oci.js';
import { Berthd } from '../../test/helpers/berthd.js';
import type { CriClients } from '../../test/helpers/cri-client.js';
import { startRegistry } from '../../test/helpers/registry.js';
import { childrenOf, containerdAvailable, startContainerd } from './containerd.js';

const { values } = parseArgs({
  options: {
    /** Comma-separated: pull, pods (default both). */
    suite: { type: 'string', default: 'pull,pods' },
    'only-pull': { type: 'boolean', default: false },
    'only-pods': { type: 'boolean', default: false },
    runs: { type: 'string', default: '5' },
    layers: { type: 'string', default: '5' },
    'layer-mb': { type: 'string', default: '40' },
    /** Pods created (and timed) per runtime in the pods suite. */
    pods: { type: 'string', default: '20' },
    only: { type: 'string' },
    /** Write a V8 CPU profile of berthd into this directory. */
    profile: { type: 'string' },
  },
});
const SUITES = ['pull', 'pods'] as const;
type Suite = (typeof SUITES)[number];
if (values['only-pull'] && values['only-pods']) throw new Error('--only-pull and --only-pods exclude each other (use --suite pull,pods)');
const suites = new Set<Suite>(
  values['only-pull'] ? ['pull'] : values['only-pods'] ? ['pods'] : values.suite.split(',').map((s) => s.trim()).filter(Boolean).map((s) => {
    if (!(SUITES as readonly string[]).includes(s)) throw new Error(`unknown suite "${s}" (known: ${SUITES.join(', ')})`);
    return s as Suite;
  }),
);
if (values.only !== undefined && values.only !== 'berth' && values.only !== 'containerd') throw new Error(`--only takes berth or containerd, not "${values.only}"`);
const runs = Number(values.runs);
const layerCount = Number(values.layers);
const layerBytes = Number(values['layer-mb']) * 1024 * 1024;
const podCount = Number(values.pods);
if (!(podCount >= 1 && Number.isInteger(podCount))) throw new Error(`--pods must be a positive integer, not "${values.pods}"`);
const runBerth = values.only !== 'containerd';
const runContainerd = values.only !== 'berth';
const berthNodeArgs = values.profile ? { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${values.profile}`] } : {};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

const out = (line = ''): void => void process.stdout.write(`${line}\n`);
const label = (name: string): string => name.padEnd(11);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------
// Pull

async function coldPulls(name: string, c: CriClients, ref: string, bytes: number): Promise<number[]> {
  const mbps: number[] = [];
  // One warm-up pull, not counted: connections, JIT, page cache of the registry's files.
  await c.image.PullImage({ image: { image: ref } });
  await c.image.RemoveImage({ image: { image: ref } });
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    await c.image.PullImage({ image: { image: ref } });
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    mbps.push(bytes / 1e6 / s);
    await c.image.RemoveImage({ image: { image: ref } });
    if ((await c.image.ImageStatus({ image: { image: ref } })).image) throw new Error(`${name}: image still present after RemoveImage`);
  }
  return mbps;
}

async function pullSuite(registryHost: string): Promise<void> {
  const results: Record<string, number> = {};
  out(`pushing a ${layerCount} x ${layerBytes / 1048576} MiB incompressible image to ${registryHost} ...`);
  const img = await pushRandomImage(registryHost, 'bench/random', 'latest', layerCount, layerBytes, 'gzip');
  const bytes = img.layersSize;
  out(`image ${img.ref}: ${(bytes / 1e6).toFixed(1)} MB compressed in ${img.layers.length} layers; ${runs} cold pulls each\n`);

  if (runBerth) {
    const b = await Berthd.start({ logLevel: 'warn', ...berthNodeArgs });
    try {
      const xs = await coldPulls('berth', b.clients, img.ref, bytes);
      results.berth = median(xs);
      out(`${label('berth')} cold pull: median ${results.berth.toFixed(0)} MB/s  (runs: ${xs.map((x) => x.toFixed(0)).join(', ')})`);
    } finally {
      await b.dispose();
    }
  }
  if (runContainerd) {
    if (!containerdAvailable()) {
      out(`${label('containerd')} not installed: no comparison`);
    } else {
      const ctr = await startContainerd(registryHost);
      try {
        const v = await ctr.clients.runtime.Version({});
        const xs = await coldPulls('containerd', ctr.clients, img.ref, bytes);
        results.containerd = median(xs);
        out(`${label('containerd')} cold pull: median ${results.containerd.toFixed(0)} MB/s  (runs: ${xs.map((x) => x.toFixed(0)).join(', ')}; ${v.runtime_name} ${v.runtime_version})`);
      } finally {
        await ctr.stop();
      }
    }
  }
  if (results.berth && results.containerd) {
    out(`\npull throughput berth/containerd: ${(results.berth / results.containerd).toFixed(2)}x (>1: berth pulls faster)`);
  }
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

/** VmRSS of a process in KiB (0 when it is gone). */
function rssKiB(pid: number): number {
  try {
    return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
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

const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;

function podConfig(i: number, logDir: string): Record<string, unknown> {
  return {
    metadata: { name: `bench-${i}`, namespace: 'bench', uid: randomUUID(), attempt: 0 },
    hostname: `bench-${i}`,
    log_directory: logDir,
    labels: { app: 'berth-bench' },
    linux: {},
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

function latencyLine(name: string, what: string, xs: number[], extra = ''): string {
  const f = (x: number): string => x.toFixed(1);
  return `${label(name)} ${what}: median ${f(median(xs))} ms  (${xs.length} pods: min ${f(Math.min(...xs))}, p90 ${f(percentile(xs, 90))}, max ${f(Math.max(...xs))} ms${extra})`;
}

function printPods(name: string, f: PodFigures): void {
  out(latencyLine(name, 'RunPodSandbox', f.run));
  const removeOnly = f.stopRemove.map((x, i) => x - f.stop[i]!);
  out(latencyLine(name, 'StopPodSandbox+RemovePodSandbox', f.stopRemove, `; of which Stop median ${median(f.stop).toFixed(1)}, Remove ${median(removeOnly).toFixed(1)} ms`));
  out(`${label(name)} RSS idle: ${mib(f.idle.rss)}  (${f.idle.detail})`);
  out(`${label(name)} RSS with ${podCount} pods: ${mib(f.loaded.rss)}, PSS ${mib(f.loaded.pss)}  (${f.loaded.detail})`);
}

/** The sandbox image containerd needs: Debian's static catatonit in pause mode, built offline. */
async function pushPauseImage(registryHost: string): Promise<string> {
  const catatonit = '/usr/bin/catatonit';
  if (!existsSync(catatonit)) throw new Error(`${catatonit} is missing: install Debian's catatonit (hack/install.sh)`);
  const layer = await buildLayer([{ path: 'catatonit', type: 'file', mode: 0o755, content: readFileSync(catatonit) }], 'gzip');
  const image = buildImage({ layers: [layer], config: { Entrypoint: ['/catatonit', '-P'], Env: [`PATH=${DEFAULT_PATH}`], Labels: { 'org.berth.bench': 'pause' } } });
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
    const faster = (what: string, b: number[], c: number[]): void => {
      const r = median(c) / median(b);
      const verdict = r >= 1 ? `berth ${r.toFixed(2)}x faster` : `berth ${(1 / r).toFixed(2)}x slower`;
      out(`${what} median: containerd/berth = ${median(c).toFixed(1)} / ${median(b).toFixed(1)} ms = ${r.toFixed(2)}  (${verdict})`);
    };
    faster('RunPodSandbox', berth.run, containerd.run);
    faster('StopPodSandbox+RemovePodSandbox', berth.stopRemove, containerd.stopRemove);
    const rss = containerd.loaded.rss / berth.loaded.rss;
    const pss = containerd.loaded.pss / berth.loaded.pss;
    out(`memory with ${podCount} pods: containerd+shims+pause / berthd = ${mib(containerd.loaded.rss)} / ${mib(berth.loaded.rss)} RSS = ${rss.toFixed(2)}x  (>1: berth uses less)`);
    // PSS divides shared pages among all their users: the shims' common text among the shims (fair), but
    // also node's text among every node process on the machine, this harness included (flatters berthd).
    out(`  PSS ${mib(containerd.loaded.pss)} / ${mib(berth.loaded.pss)} = ${pss.toFixed(2)}x  (berthd's PSS shares node's pages with other node processes, this harness included)`);
    const perPod = (f: PodFigures): number => (f.loaded.rss - f.idle.rss) / podCount;
    out(`memory per pod (RSS with ${podCount} pods - idle, / ${podCount}): berth ${(perPod(berth)).toFixed(0)} KiB, containerd ${(perPod(containerd)).toFixed(0)} KiB`);
  }
}

// ---------------------------------------------------------------------------------------

const registry = await startRegistry();
try {
  if (suites.has('pull')) await pullSuite(registry.host);
  if (suites.has('pull') && suites.has('pods')) out();
  if (suites.has('pods')) await podsSuite(registry.host);
} finally {
  await registry.stop();
}
