/**
 * Finding the pod network's CNI configuration, the way the CNI project's own loader
 * does: the files of the conf dir with extension `.conflist`, `.conf` or `.json`, in
 * lexical order; the first that parses as a valid network (list) wins. A `.conf` /
 * `.json` file holding a single plugin is treated as a list of one.
 */
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoOf, messageOf } from '../../common/errors.js';

/** One plugin of a network list: at least its `type`; other keys go to the plugin. */
export interface CniPluginConf {
  type: string;
  [key: string]: unknown;
}

export interface CniNetworkList {
  cniVersion: string;
  name: string;
  plugins: CniPluginConf[];
  disableCheck?: boolean;
  /** The file it came from. */
  file: string;
}

export type NetworkLookup = { found: true; network: CniNetworkList; skipped: string[] } | { found: false; reason: string; skipped: string[] };

const EXTENSIONS = ['.conflist', '.conf', '.json'];
/** A network config is a few KiB; anything far larger is not one. */
const MAX_CONF_BYTES = 1 << 20;

/** Parses one config file's text; returns why it is unusable instead of throwing. */
export function parseNetworkConfig(file: string, text: string): CniNetworkList | string {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    return `not valid JSON: ${messageOf(err)}`;
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return 'not a JSON object';
  const o = doc as Record<string, unknown>;
  if (typeof o.name !== 'string' || o.name === '') return 'missing "name"';
  const cniVersion = typeof o.cniVersion === 'string' ? o.cniVersion : '';
  if (file.endsWith('.conflist')) {
    if (!Array.isArray(o.plugins) || o.plugins.length === 0) return 'a .conflist needs a non-empty "plugins" array';
    for (const [i, p] of o.plugins.entries()) {
      if (typeof p !== 'object' || p === null || typeof (p as { type?: unknown }).type !== 'string') {
        return `plugins[${i}] has no "type"`;
      }
    }
    return {
      cniVersion,
      name: o.name,
      plugins: o.plugins as CniPluginConf[],
      ...(o.disableCheck === true ? { disableCheck: true } : {}),
      file,
    };
  }
  if (typeof o.type !== 'string' || o.type === '') return 'missing "type"';
  return { cniVersion, name: o.name, plugins: [{ ...o, type: o.type }], file };
}

/** Looks up the network in `dir`; never throws for a missing or bad directory. */
export async function findNetwork(dir: string): Promise<NetworkLookup> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    const why = errnoOf(err) === 'ENOENT' ? 'does not exist' : messageOf(err);
    return { found: false, reason: `no network config: CNI conf dir ${dir} ${why}`, skipped: [] };
  }
  const skipped: string[] = [];
  for (const name of names.filter((n) => EXTENSIONS.some((e) => n.endsWith(e))).sort()) {
    const file = join(dir, name);
    let text: string;
    try {
      const buf = await readFile(file);
      if (buf.length > MAX_CONF_BYTES) {
        skipped.push(`${file}: larger than ${MAX_CONF_BYTES} bytes`);
        continue;
      }
      text = buf.toString('utf8');
    } catch (err) {
      skipped.push(`${file}: ${messageOf(err)}`);
      continue;
    }
    const parsed = parseNetworkConfig(file, text);
    if (typeof parsed === 'string') {
      skipped.push(`${file}: ${parsed}`);
      continue;
    }
    return { found: true, network: parsed, skipped };
  }
  const detail = skipped.length > 0 ? ` (unusable: ${skipped.join('; ')})` : '';
  return { found: false, reason: `no network config found in ${dir}${detail}`, skipped };
}
