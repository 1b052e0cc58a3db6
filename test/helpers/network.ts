/**
 * A pod network of a test's own: a bridge with a random name and a random /24 in
 * 10.150.0.0–10.229.255.0, written as the only conflist in berthd's CNI dir.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Berthd } from './berthd.js';

export interface TestBridge {
  /** Four random hex digits, handy for unique pod names. */
  tag: string;
  bridge: string;
  /** Deletes the bridge (the CNI plugins never do); idempotent. */
  remove(): void;
}

export function testBridge(b: Berthd, prefix: string): TestBridge {
  const tag = randomBytes(2).toString('hex');
  const bridge = `${prefix}${tag}`;
  const n = parseInt(tag, 16);
  writeFileSync(
    join(b.dir, 'cni', '10-test.conflist'),
    JSON.stringify({
      cniVersion: '1.0.0',
      name: `berth-${bridge}`,
      plugins: [
        {
          type: 'bridge',
          bridge,
          isGateway: true,
          ipam: { type: 'host-local', dataDir: join(b.dir, 'ipam'), ranges: [[{ subnet: `10.${150 + ((n >> 8) % 80)}.${n & 0xff}.0/24` }]] },
        },
      ],
    }),
  );
  return {
    tag,
    bridge,
    remove: () => {
      try {
        execFileSync('ip', ['link', 'del', bridge], { stdio: 'ignore' });
      } catch {
        // not made, or gone already
      }
    },
  };
}
