/**
 * Where containers live on disk: the OCI bundle (config.json, the rootfs mount point)
 * under the root, and the mounts idmap.ts prepares apart from the bundle under the
 * state dir. Both are named by the container ID.
 */
import { join } from 'node:path';
import type { BerthConfig } from '../config/schema.js';

export function containerDirs(config: Pick<BerthConfig, 'root' | 'state'>): { bundles: string; mounts: string } {
  return { bundles: join(config.root, 'containers'), mounts: join(config.state, 'mounts') };
}
