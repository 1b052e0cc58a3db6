/**
 * Paired A/B of two berthd builds, for changes to CreateContainer/StartContainer measured
 * on a busy machine: both daemons run side by side (each in its own temp dirs, each with
 * one host-network pod and the busybox test image), and containers are created and
 * started in turn in A and B (the order flipping every round), so that both see the same
 * load at nearly the same moment. Every 10 rounds the containers are stopped and removed
 * (not timed). Prints the medians of each side and the median of the paired differences
 * of Create+Start, with how often B was faster.
 *
 * Usage: node dist/hack/bench/pair.js --a DIR --b DIR [--containers N]
 *   DIR is the output dir of a build (`tsc --outDir DIR`) holding test/helpers/berthd.js;
 *   the daemon each side runs is that build's own.
 */
import { randomUUID } from 'node:crypto';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pushFixtures } from '../test-images/oci.js';
import type { Berthd } from '../../test/helpers/berthd.js';
import { startRegistry } from '../../test/helpers/registry.js';

const { values } = parseArgs({ options: { a: { type: 'string' }, b: { type: 'string' }, containers: { type: 'string', default: '40' } } });
if (values.a === undefined || values.b === undefined) throw new Error('usage: pair.js --a DIR --b DIR [--containers N]');
const rounds = Number(values.containers);
if (!(rounds >= 1 && Number.isInteger(rounds))) throw new Error(`--containers must be a positive integer, not "${values.containers}"`);

type BerthdClass = typeof Berthd;
const load = async (dir: string): Promise<BerthdClass> => ((await import(resolve(dir, 'test/helpers/berthd.js'))) as { Berthd: BerthdClass }).Berthd;

interface Side {
  name: string;
  b: Berthd;
  pod: string;
  podCfg: Record<string, unknown>;
  create: number[];
  start: number[];
  ids: string[];
}

const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;
function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function clear(s: Side): Promise<void> {
  for (const id of s.ids) {
    await s.b.runtime.StopContainer({ container_id: id, timeout: 0 });
    await s.b.runtime.RemoveContainer({ container_id: id });
  }
  s.ids = [];
}

async function one(s: Side, image: string, i: number, timed: boolean): Promise<void> {
  const config = { metadata: { name: `c${i}`, attempt: 0 }, image: { image }, command: ['sleep', '1000'], log_path: `c${i}.log`, linux: {} };
  let t0 = process.hrtime.bigint();
  const { container_id: id } = await s.b.runtime.CreateContainer({ pod_sandbox_id: s.pod, config, sandbox_config: s.podCfg });
  const c = ms(t0);
  s.ids.push(id);
  t0 = process.hrtime.bigint();
  await s.b.runtime.StartContainer({ container_id: id });
  if (timed) {
    s.create.push(c);
    s.start.push(ms(t0));
  }
}

const registry = await startRegistry();
const sides: Side[] = [];
try {
  const image = (await pushFixtures(registry.host)).busybox.ref;
  for (const [name, dir] of [
    ['A', values.a],
    ['B', values.b],
  ] as const) {
    const b = await (await load(dir)).start({ logLevel: 'warn' });
    const podCfg = {
      metadata: { name: `pair-${name}`, namespace: 'bench', uid: randomUUID(), attempt: 0 },
      hostname: 'pair',
      log_directory: resolve(b.dir, 'pod-logs'),
      linux: { security_context: { namespace_options: { network: 'NODE' as const } } },
    };
    sides.push({ name, b, pod: '', podCfg, create: [], start: [], ids: [] });
    await b.image.PullImage({ image: { image } });
    sides.at(-1)!.pod = (await b.runtime.RunPodSandbox({ config: podCfg })).pod_sandbox_id;
  }
  for (const s of sides) await one(s, image, 0, false); // warm-up
  for (let i = 1; i <= rounds; i++) {
    for (const s of i % 2 ? sides : [...sides].reverse()) await one(s, image, i, true);
    if (i % 10 === 0) for (const s of sides) await clear(s);
  }
  const cs = (s: Side): number[] => s.create.map((x, i) => x + s.start[i]!);
  for (const s of sides) {
    process.stdout.write(
      `${s.name} (${s.name === 'A' ? values.a : values.b}): CreateContainer ${median(s.create).toFixed(1)}, StartContainer ${median(s.start).toFixed(1)}, Create+Start ${median(cs(s)).toFixed(1)} ms (median of ${s.create.length})\n`,
    );
  }
  const [a, b] = [cs(sides[0]!), cs(sides[1]!)];
  const diffs = a.map((x, i) => x - b[i]!);
  process.stdout.write(
    `Create+Start, A - B: median ${median(diffs).toFixed(1)} ms; B faster in ${diffs.filter((d) => d > 0).length} of ${diffs.length} pairs\n`,
  );
} finally {
  for (const s of sides) {
    await clear(s).catch(() => undefined);
    if (s.pod !== '') {
      await s.b.runtime.StopPodSandbox({ pod_sandbox_id: s.pod }).catch(() => undefined);
      await s.b.runtime.RemovePodSandbox({ pod_sandbox_id: s.pod }).catch(() => undefined);
    }
    await s.b.dispose();
  }
  await registry.stop();
}
