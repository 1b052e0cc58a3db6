/**
 * The pull suite: cold pulls of an image of incompressible gzip layers from the local
 * registry (one warm-up pull, then `runs` timed ones, each image removed after), by
 * berth and by containerd: the throughput of each pull, and the daemon's CPU seconds per
 * 100 MB (its threads and the children it reaped); and the daemon's memory as issue 14
 * counts it: its RSS fresh and idle (before any pull), and `settleSeconds` after the last
 * timed pull (issue 14: back within 10 MiB of idle).
 */
import { Berthd } from '../../test/helpers/berthd.js';
import type { CriClients } from '../../test/helpers/cri-client.js';
import { pushRandomImage } from '../test-images/oci.js';
import { containerdAvailable, startContainerd } from './containerd.js';
import { IDLE_AFTER_START_S, type PullFigures, type Results } from './results.js';
import { cpuSeconds, label, median, out, rssKiB, sleep, type SuiteContext } from './suite.js';

/** Throughput of each timed cold pull (MB/s), and the daemon's CPU seconds (its threads and the children it reaped) per 100 MB over all of them. */
async function coldPulls(name: string, c: CriClients, ref: string, bytes: number, pid: number, runs: number): Promise<{ mbps: number[]; cpuPer100MB: number }> {
  const mbps: number[] = [];
  // One warm-up pull, not counted: connections, JIT, page cache of the registry's files.
  await c.image.PullImage({ image: { image: ref } });
  await c.image.RemoveImage({ image: { image: ref } });
  let cpu = 0;
  for (let i = 0; i < runs; i++) {
    const cpu0 = cpuSeconds(pid, true);
    const t0 = process.hrtime.bigint();
    await c.image.PullImage({ image: { image: ref } });
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    cpu += cpuSeconds(pid, true) - cpu0;
    mbps.push(bytes / 1e6 / s);
    await c.image.RemoveImage({ image: { image: ref } });
    if ((await c.image.ImageStatus({ image: { image: ref } })).image) throw new Error(`${name}: image still present after RemoveImage`);
  }
  return { mbps, cpuPer100MB: cpu / ((runs * bytes) / 1e8) };
}

/** The daemon's RSS in MiB: the median of 5 samples 200 ms apart (one sample may catch a collection under way). */
async function rssMiB(pid: number): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < 5; i++) {
    if (i > 0) await sleep(200);
    xs.push(rssKiB(pid) / 1024);
  }
  return median(xs);
}

/** Idle RSS, the timed pulls, then RSS `settleSeconds` after them (no memory figures when 0). */
async function measure(name: string, c: CriClients, ref: string, bytes: number, pid: number, runs: number, settleSeconds: number): Promise<PullFigures> {
  let idleMiB = 0;
  if (settleSeconds > 0) {
    await sleep(IDLE_AFTER_START_S * 1000);
    idleMiB = await rssMiB(pid);
  }
  const { mbps, cpuPer100MB } = await coldPulls(name, c, ref, bytes, pid, runs);
  const f: PullFigures = { mbps, median: median(mbps), cpuPer100MB };
  if (settleSeconds > 0) {
    await sleep(settleSeconds * 1000);
    f.memory = { idleMiB, afterMiB: await rssMiB(pid), settleSeconds };
  }
  return f;
}

/** One runtime's line: throughput of each pull, CPU per 100 MB, and the memory figures when taken. */
function report(name: string, f: PullFigures, version = ''): void {
  const mem = f.memory;
  out(
    `${label(name)} cold pull: median ${f.median.toFixed(0)} MB/s  (runs: ${f.mbps.map((x) => x.toFixed(0)).join(', ')}${version}); CPU ${f.cpuPer100MB.toFixed(3)} s per 100 MB` +
      (mem
        ? `; RSS ${mem.idleMiB.toFixed(1)} MiB fresh and idle, ${mem.afterMiB.toFixed(1)} MiB ${mem.settleSeconds} s after the pulls (${(mem.afterMiB - mem.idleMiB).toFixed(1)} over idle)`
        : ''),
  );
}

export async function pullSuite(ctx: SuiteContext, layerCount: number, layerBytes: number, settleSeconds: number): Promise<NonNullable<Results['pull']>> {
  const { registryHost, runs, runBerth, runContainerd } = ctx;
  out(`pushing a ${layerCount} x ${layerBytes / 1048576} MiB incompressible image to ${registryHost} ...`);
  const img = await pushRandomImage(registryHost, 'bench/random', 'latest', layerCount, layerBytes, 'gzip');
  const bytes = img.layersSize;
  const figures: NonNullable<Results['pull']> = { bytes, layers: img.layers.length };
  out(`image ${img.ref}: ${(bytes / 1e6).toFixed(1)} MB compressed in ${img.layers.length} layers; ${runs} cold pulls each\n`);

  if (runBerth) {
    const b = await Berthd.start({ logLevel: 'warn', ...ctx.berthOptions });
    try {
      figures.berth = await measure('berth', b.clients, img.ref, bytes, b.proc.pid!, runs, settleSeconds);
      report('berth', figures.berth);
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
        figures.containerd = await measure('containerd', ctr.clients, img.ref, bytes, ctr.pid, runs, settleSeconds);
        report('containerd', figures.containerd, `; ${v.runtime_name} ${v.runtime_version}`);
      } finally {
        await ctr.stop();
      }
    }
  }
  const { berth, containerd } = figures;
  if (berth && containerd) {
    out(`\npull throughput berth/containerd: ${(berth.median / containerd.median).toFixed(2)}x (>1: berth pulls faster)`);
    out(`pull CPU per MB berth/containerd: ${(berth.cpuPer100MB / containerd.cpuPer100MB).toFixed(2)}x (<1: berth uses less CPU)`);
  }
  return figures;
}
