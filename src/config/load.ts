/**
 * Loading the effective configuration: defaults, the TOML file, its drop-ins, flags.
 * See schema.ts for the keys and the layering rules.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parse as parseToml, stringify as stringifyToml } from 'smol-toml';
import { errnoOf, messageOf } from '../common/errors.js';
import { DEFAULT_CONFIG_FILE, SCHEMA, defaultConfig, describe, type BerthConfig } from './schema.js';

/** A configuration that cannot be used; the message names the source and the key. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export interface LoadOptions {
  /** Config file given with --config; it must exist. Without it the default file is optional. */
  file?: string;
  /** Values from command-line flags, by dotted key, applied last. */
  overrides?: Record<string, unknown>;
}

export interface LoadedConfig {
  config: BerthConfig;
  /** The files read, in the order they were applied. */
  sources: string[];
}

type Table = Record<string, unknown>;

function isTable(v: unknown): v is Table {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** Validates `doc` against the schema and merges it into `into`, in place. */
function apply(into: Table, doc: Table, source: string, prefix = ''): void {
  for (const [key, value] of Object.entries(doc)) {
    const dotted = prefix + key;
    const check = SCHEMA[dotted];
    const isSection = Object.keys(SCHEMA).some((k) => k.startsWith(dotted + '.'));
    if (isSection) {
      if (!isTable(value)) throw new ConfigError(`${source}: key '${dotted}': expected a table, got ${describe(value)}`);
      const sub = into[key];
      apply(isTable(sub) ? sub : (into[key] = {}), value, source, dotted + '.');
      continue;
    }
    if (!check) throw new ConfigError(`${source}: unknown key '${dotted}'`);
    const why = check(value);
    if (why) throw new ConfigError(`${source}: key '${dotted}': ${why}`);
    into[key] = Array.isArray(value) ? [...(value as unknown[])] : value;
  }
}

function readToml(file: string): Table {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read: ${messageOf(err)}`);
  }
  try {
    return parseToml(text) as Table;
  } catch (err) {
    throw new ConfigError(`${file}: not valid TOML: ${messageOf(err).split('\n')[0]}`);
  }
}

function dropIns(configFile: string): string[] {
  const dir = join(dirname(configFile), 'config.d');
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw new ConfigError(`${dir}: cannot list drop-ins: ${messageOf(err)}`);
  }
  return names.filter((n) => n.endsWith('.toml')).sort().map((n) => join(dir, n));
}

/** Builds the effective configuration, or throws a {@link ConfigError}. */
export function loadConfig(opts: LoadOptions = {}): LoadedConfig {
  const config = defaultConfig() as unknown as Table;
  const sources: string[] = [];
  const file = opts.file ?? DEFAULT_CONFIG_FILE;

  if (opts.file !== undefined && !existsSync(opts.file)) {
    throw new ConfigError(`${opts.file}: config file given with --config does not exist`);
  }
  if (existsSync(file)) {
    apply(config, readToml(file), file);
    sources.push(file);
  }
  for (const dropIn of dropIns(file)) {
    apply(config, readToml(dropIn), dropIn);
    sources.push(dropIn);
  }

  const flags: Table = {};
  for (const [dotted, value] of Object.entries(opts.overrides ?? {})) {
    if (value === undefined) continue;
    const parts = dotted.split('.');
    let t = flags;
    for (const p of parts.slice(0, -1)) t = (t[p] ??= {}) as Table;
    t[parts[parts.length - 1]!] = value;
  }
  apply(config, flags, 'command line');

  return { config: config as unknown as BerthConfig, sources };
}

/** The configuration as TOML, as `berthd config` prints it. */
export function formatConfig(config: BerthConfig): string {
  return stringifyToml(config as unknown as Table) + '\n';
}
