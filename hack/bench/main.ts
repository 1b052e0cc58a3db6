/**
 * berth's benchmark. Each figure is the median of several runs, measured through the
 * CRI socket exactly as kubelet would call it; where containerd is installed the same
 * harness drives it and the ratio berth/containerd is printed.
 *
 * Measured now: cold pull throughput of a large multi-layer image from a local registry
 * (5 layers of 40 MB incompressible data by default; "cold" = the image and all its
 * blobs and snapshots removed before each run).
 * Usage: node dist/hack/bench/main.js [--runs N] [--layers N] [--layer-mb N] [--only berth|containerd] [--profile DIR]
 */
import { parseArgs } from 'node:util';
import { pushRandomImage } from '../test-images/oci.js';
import { Berthd } from '../../test/helpers/berthd.js';
import type { CriClients } from '../../test/helpers/cri-client.js';
import { startRegistry } from '../../test/helpers/registry.js';
import { containerdAvailable, startContainerd } from './containerd.js';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    layers: { type: 'string', default: '5' },
    'layer-mb': { type: 'string', default: '40' },
    only: { type: 'string' },
    /** Write a V8 CPU profile of berthd into this directory. */
    profile: { type: 'string' },
  },
});
const runs = Number(values.runs);
const layerCount = Number(values.layers);
const layerBytes = Number(values['layer-mb']) * 1024 * 1024;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

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

const registry = await startRegistry();
const results: Record<string, number> = {};
try {
  process.stdout.write(`pushing a ${layerCount} x ${layerBytes / 1048576} MiB incompressible image to ${registry.host} ...\n`);
  const img = await pushRandomImage(registry.host, 'bench/random', 'latest', layerCount, layerBytes, 'gzip');
  const bytes = img.layersSize;
  process.stdout.write(`image ${img.ref}: ${(bytes / 1e6).toFixed(1)} MB compressed in ${img.layers.length} layers; ${runs} cold pulls each\n\n`);

  if (values.only !== 'containerd') {
    const b = await Berthd.start({ logLevel: 'warn', ...(values.profile ? { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${values.profile}`] } : {}) });
    try {
      const xs = await coldPulls('berth', b.clients, img.ref, bytes);
      results.berth = median(xs);
      process.stdout.write(`berth       cold pull: median ${results.berth.toFixed(0)} MB/s  (runs: ${xs.map((x) => x.toFixed(0)).join(', ')})\n`);
    } finally {
      await b.dispose();
    }
  }
  if (values.only !== 'berth') {
    if (!containerdAvailable()) {
      process.stdout.write('containerd  not installed: no comparison\n');
    } else {
      const ctr = await startContainerd(registry.host);
      try {
        const v = await ctr.clients.runtime.Version({});
        const xs = await coldPulls('containerd', ctr.clients, img.ref, bytes);
        results.containerd = median(xs);
        process.stdout.write(`containerd  cold pull: median ${results.containerd.toFixed(0)} MB/s  (runs: ${xs.map((x) => x.toFixed(0)).join(', ')}; ${v.runtime_name} ${v.runtime_version})\n`);
      } finally {
        await ctr.stop();
      }
    }
  }
  if (results.berth && results.containerd) {
    process.stdout.write(`\npull throughput berth/containerd: ${(results.berth / results.containerd).toFixed(2)}x\n`);
  }
} finally {
  await registry.stop();
}
