/**
 * Loading the effective configuration: defaults, the TOML file, its drop-ins, flags.
 * See schema.ts for the keys and the layering rules.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parse as parseToml, stringify as stringifyToml } from 'smol-toml';
import { errnoOf, messageOf } from '../common/errors.js';
import { DEFAULT_CONFIG_FILE, SCHEMA, defaultConfig, defaultRegistryConfig, describe, type BerthConfig } from './schema.js';

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

const SCHEMA_KEYS = Object.keys(SCHEMA);

/** A key as a person would write it in TOML: quoted when it holds a dot. */
function displayPath(path: string[]): string {
  return path.map((k) => (/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k))).join('.');
}

/**
 * Validates `doc` against the schema and merges it into `into`, in place. `path` is
 * where `doc` sits; `schemaPath` is the same with user-chosen keys replaced by `*`.
 */
function apply(into: Table, doc: Table, source: string, path: string[] = [], schemaPath: string[] = []): void {
  for (const [key, value] of Object.entries(doc)) {
    const here = [...path, key];
    const exact = [...schemaPath, key].join('.');
    const wild = [...schemaPath, '*'].join('.');
    const isSection = (p: string): boolean => SCHEMA_KEYS.some((k) => k.startsWith(p + '.'));
    const schemaKey = SCHEMA[exact] || isSection(exact) ? exact : isSection(wild) || SCHEMA[wild] ? wild : undefined;
    if (schemaKey === undefined) throw new ConfigError(`${source}: unknown key '${displayPath(here)}'`);
    if (isSection(schemaKey)) {
      if (!isTable(value)) throw new ConfigError(`${source}: key '${displayPath(here)}': expected a table, got ${describe(value)}`);
      let sub = into[key];
      if (!isTable(sub)) {
        sub = schemaKey.endsWith('*') ? defaultsFor(schemaKey) : {};
        into[key] = sub;
      }
      apply(sub as Table, value, source, here, schemaKey.split('.'));
      continue;
    }
    const why = SCHEMA[schemaKey]!(value);
    if (why) throw new ConfigError(`${source}: key '${displayPath(here)}': ${why}`);
    into[key] = Array.isArray(value) ? [...(value as unknown[])] : value;
  }
}

/** Defaults of a user-keyed table (e.g. one registry), so every key is present. */
function defaultsFor(schemaKey: string): Table {
  if (schemaKey === 'registries.*') return defaultRegistryConfig() as unknown as Table;
  if (schemaKey === 'runtimes.*') return { path: '' };
  return {};
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
  return names
    .filter((n) => n.endsWith('.toml'))
    .sort()
    .map((n) => join(dir, n));
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

  const result = config as unknown as BerthConfig;
  if (result.images.registry_certs_dir === '') result.images.registry_certs_dir = join(dirname(file), 'certs.d');
  for (const [name, rt] of Object.entries(result.runtimes)) {
    if (rt.path === '') throw new ConfigError(`runtimes.${name}: "path" is required`);
  }
  if (!(result.default_runtime in result.runtimes)) {
    throw new ConfigError(`default_runtime "${result.default_runtime}" is not one of the configured runtimes (${Object.keys(result.runtimes).join(', ')})`);
  }
  return { config: result, sources };
}

/** The configuration with registry passwords masked, for output anyone may read. */
export function redactedConfig(config: BerthConfig): BerthConfig {
  const registries: BerthConfig['registries'] = {};
  for (const [host, r] of Object.entries(config.registries)) {
    registries[host] = { ...r, password: r.password === '' ? '' : '[redacted]' };
  }
  return { ...config, registries };
}

/** The configuration as TOML, as `berthd config` prints it (passwords masked). */
export function formatConfig(config: BerthConfig): string {
  return stringifyToml(redactedConfig(config) as unknown as Table) + '\n';
}
