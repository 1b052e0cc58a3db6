/**
 * The configuration in force, which a reload (SIGHUP, `berthd reload`) may replace while
 * berthd runs.
 *
 * One {@link LiveConfig} holds it. Whatever may change at a reload is read from it at
 * each use, never copied at start: the registry client (mirrors, credentials, TLS, pull
 * limits), the image pins, the logger's level, the CNI conf dir, plugin dirs and timeout,
 * and the streaming timeouts. Modules that take a plain `BerthConfig` get
 * {@link LiveConfig.view}, which reads through to the config in force on every property
 * access; they must keep the view, not a section taken from it once.
 *
 * Which keys a reload applies is decided here, by {@link planReload}: the keys of
 * {@link LIVE_KEYS} change for the next pull, pod or stream, and running pods are not
 * touched. Every other key (the socket, root and state dirs, the cgroup driver, runtime
 * handlers, listen addresses, tracing…) is bound at start-up; a reload that changes one
 * keeps its running value and names the key in the log.
 */
import type { BerthConfig } from './schema.js';

/**
 * Keys (and the tables whose every key) a reload applies. Each is read at use: a change
 * affects the next pull, the next pod's network, the next stream, the next log line.
 */
export const LIVE_KEYS: readonly string[] = [
  'log_level',
  'shutdown_timeout_seconds',
  'cni',
  'images',
  'registries',
  'sandbox.cni_timeout_seconds',
  'sandbox.shm_size_bytes',
  'streaming.token_ttl_seconds',
  'streaming.idle_timeout_seconds',
  'streaming.stream_creation_timeout_seconds',
];

/**
 * Tables that change as a whole or not at all: a handler's path and the default handler
 * must stay consistent with each other.
 */
const WHOLE_TABLES = ['runtimes'];

/** A key whose new value needs a restart, with the value that stays in force. */
export interface RefusedKey {
  key: string;
  running: unknown;
  wanted: unknown;
}

export interface ReloadPlan {
  /** The configuration to put in force: the new one, with every restart-only key at its running value. */
  config: BerthConfig;
  /** Live keys whose value changes, in dotted form (`registries."docker.io".mirrors`). */
  applied: string[];
  /** Restart-only keys whose value would change, kept at their running value. */
  refused: RefusedKey[];
}

type Table = Record<string, unknown>;

function isTable(v: unknown): v is Table {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Every leaf (a scalar or an array) of a config, by its path. */
function leaves(t: Table, path: string[] = [], out = new Map<string, { path: string[]; value: unknown }>()): Map<string, { path: string[]; value: unknown }> {
  for (const [k, v] of Object.entries(t)) {
    const here = [...path, k];
    if (isTable(v)) leaves(v, here, out);
    else out.set(JSON.stringify(here), { path: here, value: v });
  }
  return out;
}

/** A key as TOML spells it: segments holding anything but letters, digits, '_' and '-' are quoted. */
export function dottedKey(path: readonly string[]): string {
  return path.map((k) => (/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k))).join('.');
}

function isLive(path: readonly string[]): boolean {
  const key = path.join('.');
  return LIVE_KEYS.some((live) => key === live || key.startsWith(live + '.'));
}

function get(t: Table, path: readonly string[]): unknown {
  let v: unknown = t;
  for (const k of path) v = isTable(v) ? v[k] : undefined;
  return v;
}

function set(t: Table, path: readonly string[], value: unknown): void {
  let at = t;
  for (const k of path.slice(0, -1)) {
    if (!isTable(at[k])) at[k] = {};
    at = at[k] as Table;
  }
  const last = path[path.length - 1]!;
  if (value === undefined) delete at[last];
  else at[last] = structuredClone(value);
}

/**
 * What reloading from `running` to `next` does: which changed keys apply and which need
 * a restart (and keep their running value). Pure; `next` is not modified.
 */
export function planReload(running: BerthConfig, next: BerthConfig): ReloadPlan {
  const before = leaves(running as unknown as Table);
  const after = leaves(next as unknown as Table);
  const config = structuredClone(next) as unknown as Table;
  const applied: string[] = [];
  const refused: RefusedKey[] = [];
  const restored = new Set<string>();
  for (const id of new Set([...before.keys(), ...after.keys()])) {
    const path = (before.get(id) ?? after.get(id))!.path;
    const was = before.get(id)?.value;
    const now = after.get(id)?.value;
    if (JSON.stringify(was) === JSON.stringify(now)) continue;
    if (isLive(path)) {
      applied.push(dottedKey(path));
      continue;
    }
    refused.push({ key: dottedKey(path), running: was ?? null, wanted: now ?? null });
    const unit = WHOLE_TABLES.includes(path[0]!) ? path.slice(0, 1) : path;
    if (restored.has(JSON.stringify(unit))) continue;
    restored.add(JSON.stringify(unit));
    set(config, unit, get(running as unknown as Table, unit));
  }
  return { config: config as unknown as BerthConfig, applied: applied.sort(), refused: refused.sort((a, b) => a.key.localeCompare(b.key)) };
}

/**
 * An object with the keys `get()` has now, each read from `get()` at every access: a
 * view of a fixed-shape table that follows reloads.
 */
export function readThrough<T extends object>(get: () => T): T {
  const view = {};
  for (const key of Object.keys(get())) {
    Object.defineProperty(view, key, { enumerable: true, get: () => (get() as Record<string, unknown>)[key] });
  }
  return view as T;
}

export class LiveConfig {
  private config: BerthConfig;
  private files: readonly string[];
  private gen = 1;
  private at = new Date();
  /** The config in force, read through on every access (see the file's comment). */
  readonly view: BerthConfig;

  constructor(config: BerthConfig, sources: readonly string[]) {
    this.config = config;
    this.files = sources;
    this.view = readThrough(() => this.config);
  }

  /** The config in force now. Do not keep it: the next reload replaces it. */
  get current(): BerthConfig {
    return this.config;
  }

  /** The files it was read from, in the order they applied. */
  get sources(): readonly string[] {
    return this.files;
  }

  /** 1 at start-up, one more for each reload that put a config in force. */
  get generation(): number {
    return this.gen;
  }

  /** When the config in force was loaded. */
  get loadedAt(): Date {
    return this.at;
  }

  /** A view of one fixed-shape section (e.g. `streaming`) that follows reloads. */
  section<K extends 'images' | 'streaming' | 'cni' | 'sandbox'>(key: K): BerthConfig[K] {
    return readThrough(() => this.config[key]);
  }

  /** Puts `config` in force. */
  replace(config: BerthConfig, sources: readonly string[]): void {
    this.config = config;
    this.files = sources;
    this.gen++;
    this.at = new Date();
  }
}
