/**
 * The benchmark's results file (hack/bench/results.ts): the cold-pull rows carry both
 * runtimes' medians, the ratio, and the issue's goal as a floor (throughput), met or not.
 */
import assert from 'node:assert/strict';
import { markdown, PULL_GOAL, type Results } from '../../../hack/bench/results.js';

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
});
