/**
 * The benchmark's results file (hack/bench/results.ts): the cold-pull rows carry both
 * runtimes' medians, the ratio, and the issue's goal as a floor (throughput), met or not.
 */
import assert from 'node:assert/strict';
import { AFTER_PULL_GOAL_MIB, IDLE_RSS_GOAL_MIB, markdown, PULL_GOAL, type Results } from '../../../hack/bench/results.js';

describe('bench: the results file', () => {
  const base = (): Results => ({
    date: '2026-12-07T00:00:00Z',
    machine: { nproc: 2, cpu: 'test CPU', memGiB: 1, kernel: '6.0', node: 'v20' },
    berthCommit: 'abc1234',
    command: 'npm run bench -- --suite pull',
  });
  const pullRows = (md: string): string[] => md.split('\n').filter((l) => l.startsWith('| cold pull |'));

  it('gives the cold pull its throughput and CPU rows, the throughput goal as a floor', () => {
    const r = base();
    r.pull = {
      bytes: 209.8e6,
      layers: 5,
      berth: { mbps: [250, 260, 270], median: 260, cpuPer100MB: 0.5 },
      containerd: { mbps: [110, 120, 130], median: 120, cpuPer100MB: 1 },
    };
    const [throughput, cpu] = pullRows(markdown(r));
    assert.equal(throughput, `| cold pull | throughput median, 210 MB in 5 layers (MB/s) | 260.0 | 120.0 | 2.17 | ≥ ${PULL_GOAL} ✓ |`);
    assert.equal(cpu, '| cold pull | CPU seconds per 100 MB | 0.50 | 1.00 | 0.50 |  |');
  });

  it('marks a throughput under the goal as not met, and leaves the ratio out when containerd did not run', () => {
    const r = base();
    r.pull = { bytes: 1e8, layers: 2, berth: { mbps: [190], median: 190, cpuPer100MB: 0.5 }, containerd: { mbps: [100], median: 100, cpuPer100MB: 1 } };
    assert.match(pullRows(markdown(r))[0]!, /\| 1\.90 \| ≥ 2 ✗ \|$/);
    r.pull = { bytes: 1e8, layers: 2, berth: { mbps: [190], median: 190, cpuPer100MB: 0.5 } };
    assert.match(pullRows(markdown(r))[0]!, /\| 190\.0 \| – \| – \| ≥ 2 \|$/);
  });

  it("gives the daemon's memory around the pulls its rows, each goal on berth's own figure", () => {
    const r = base();
    r.pull = {
      bytes: 1e8,
      layers: 2,
      berth: { mbps: [250], median: 250, cpuPer100MB: 0.5, memory: { idleMiB: 66.2, afterMiB: 71.5, settleSeconds: 60 } },
      containerd: { mbps: [120], median: 120, cpuPer100MB: 1, memory: { idleMiB: 48.5, afterMiB: 53.0, settleSeconds: 60 } },
    };
    const [, , idle, after] = pullRows(markdown(r));
    assert.equal(idle, `| cold pull | daemon RSS fresh and idle (20 s after start) (MiB) | 66.2 | 48.5 | 1.36 | berth ≤ ${IDLE_RSS_GOAL_MIB} MiB ✓ |`);
    // The ratio of two small deltas is left out.
    assert.equal(after, `| cold pull | daemon RSS 60 s after the pulls, over idle (MiB) | 5.3 | 4.5 | – | berth ≤ ${AFTER_PULL_GOAL_MIB} MiB ✓ |`);
    r.pull.berth!.memory = { idleMiB: 75, afterMiB: 90, settleSeconds: 60 };
    const [, , idle2, after2] = pullRows(markdown(r));
    assert.match(idle2!, /\| 75\.0 \| 48\.5 \| 1\.55 \| berth ≤ 70 MiB ✗ \|$/);
    assert.match(after2!, /\| 15\.0 \| 4\.5 \| – \| berth ≤ 10 MiB ✗ \|$/);
  });

  it('has no memory rows when the pulls were run without them', () => {
    const r = base();
    r.pull = { bytes: 1e8, layers: 2, berth: { mbps: [250], median: 250, cpuPer100MB: 0.5 } };
    assert.equal(pullRows(markdown(r)).length, 2);
  });
});
