/**
 * `berthd config` against a running daemon: the configuration in force, as the berthd
 * of a state dir published it (config/reload.ts), which differs from the files when they
 * changed since its last reload or when a changed key needs a restart.
 */
import { formatConfig } from '../config/load.js';
import { readInForce } from '../config/reload.js';
import { runningBerthd } from './reload.js';

/** The TOML of the config in force in the berthd running on `state`, or undefined when none runs. */
export function configInForce(state: string): string | undefined {
  const found = runningBerthd(state);
  if ('why' in found) return undefined;
  const record = readInForce(state);
  if (record?.pid !== found.pid) return undefined;
  const lines = [
    `# The configuration in force in berthd pid ${record.pid}: generation ${record.generation}, loaded ${record.loaded_at}`,
    `# from ${record.sources.length > 0 ? record.sources.join(', ') : 'defaults and flags only'}`,
  ];
  const last = record.last_reload;
  if (last && !last.ok) lines.push(`# the last reload (${last.at}) was refused: ${last.error ?? ''}`);
  if (last?.ok && last.refused.length > 0) lines.push(`# kept until a restart (changed in the files): ${last.refused.join(', ')}`);
  return `${lines.join('\n')}\n${formatConfig(record.config)}`;
}
