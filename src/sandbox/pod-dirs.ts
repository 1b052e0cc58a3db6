/**
 * Where pods live on disk, and the entries there that name no known pod: shared by
 * SandboxService (its dirs, recovery) and `berthd doctor`.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { errnoOf } from '../common/errors.js';
import type { BerthConfig } from '../config/schema.js';

/** Where pods live on disk: their pinned namespaces under the state dir, their files (hosts, resolv.conf, shm) under the root. */
export function podDirs(config: Pick<BerthConfig, 'root' | 'state'>): { nsRoot: string; podRoot: string } {
  return { nsRoot: join(config.state, 'ns'), podRoot: join(config.root, 'sandboxes') };
}

/**
 * The entries of the pods' dirs that name no known pod (`ns`: a namespace pin dir or
 * file; `pod`: a pod's files): recovery removes them; `berthd doctor` reports them.
 * A missing dir has none.
 */
export function strayPodEntries(
  dirs: { nsRoot: string; podRoot: string },
  known: ReadonlySet<string>,
): Array<{ kind: 'ns' | 'pod'; name: string; path: string }> {
  const out: Array<{ kind: 'ns' | 'pod'; name: string; path: string }> = [];
  for (const [kind, dir] of [
    ['ns', dirs.nsRoot],
    ['pod', dirs.podRoot],
  ] as const) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') continue;
      throw err;
    }
    for (const name of names) if (!known.has(name)) out.push({ kind, name, path: join(dir, name) });
  }
  return out;
}
