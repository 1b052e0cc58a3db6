/**
 * The shape of berth's configuration, its defaults, and the validation of every key.
 *
 * The file format is TOML: `/etc/berth/config.toml`, then the drop-ins of
 * `/etc/berth/config.d/*.toml` in lexical order, then command-line flags, each layer
 * overriding the one before. Tables merge key by key; arrays and scalars replace.
 * Any key not declared here, or a value of the wrong type or range, is an error that
 * names the file and the key: a bad config never half-starts the daemon.
 */
import { LOG_LEVELS, type LogLevel } from '../common/logger.js';

export type CgroupDriver = 'cgroupfs' | 'systemd';

export interface CniConfig {
  /** Directory holding the CNI network configuration (`.conflist`, `.conf`, `.json`). */
  conf_dir: string;
  /** Directories searched, in order, for CNI plugin binaries. */
  bin_dirs: string[];
}

export interface BerthConfig {
  /** gRPC unix socket kubelet and crictl connect to. */
  socket: string;
  /** Persistent state: database, content store, snapshots, bundles. */
  root: string;
  /** Runtime state that does not survive a reboot: namespaces, exit files, sockets. */
  state: string;
  log_level: LogLevel;
  /** How pods' and containers' cgroups are managed; must match kubelet's `--cgroup-driver`. */
  cgroup_driver: CgroupDriver;
  /** Seconds in-flight calls get to finish on SIGTERM before they are cut off. */
  shutdown_timeout_seconds: number;
  cni: CniConfig;
}

export const DEFAULT_CONFIG_FILE = '/etc/berth/config.toml';

export function defaultConfig(): BerthConfig {
  return {
    socket: '/run/berth/berth.sock',
    root: '/var/lib/berth',
    state: '/run/berth',
    log_level: 'info',
    cgroup_driver: 'cgroupfs',
    shutdown_timeout_seconds: 10,
    cni: {
      conf_dir: '/etc/cni/net.d',
      bin_dirs: ['/usr/lib/cni', '/opt/cni/bin'],
    },
  };
}

/** Checks one value; returns the reason it is wrong, or undefined when it is right. */
type Check = (value: unknown) => string | undefined;

const absolutePath: Check = (v) => {
  if (typeof v !== 'string') return `expected a string path, got ${describe(v)}`;
  if (!v.startsWith('/')) return `expected an absolute path, got "${v}"`;
  if (v.length > 4096 || v.includes('\0')) return 'not a usable path';
  return undefined;
};

const oneOf = (values: readonly string[]): Check => (v) =>
  typeof v === 'string' && values.includes(v) ? undefined : `expected one of ${values.map((x) => `"${x}"`).join(', ')}, got ${describe(v)}`;

const integerIn = (min: number, max: number): Check => (v) =>
  typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max ? undefined : `expected an integer from ${min} to ${max}, got ${describe(v)}`;

const pathList: Check = (v) => {
  if (!Array.isArray(v)) return `expected an array of absolute paths, got ${describe(v)}`;
  for (const [i, item] of v.entries()) {
    const why = absolutePath(item);
    if (why) return `item ${i}: ${why}`;
  }
  return undefined;
};

/** Every key berth knows, by dotted name. A table is declared by the keys under it. */
export const SCHEMA: Readonly<Record<string, Check>> = {
  socket: absolutePath,
  root: absolutePath,
  state: absolutePath,
  log_level: oneOf(LOG_LEVELS),
  cgroup_driver: oneOf(['cgroupfs', 'systemd']),
  shutdown_timeout_seconds: integerIn(0, 3600),
  'cni.conf_dir': absolutePath,
  'cni.bin_dirs': pathList,
};

export function describe(v: unknown): string {
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Date) return 'a date';
  if (v === null) return 'null';
  if (typeof v === 'object') return 'a table';
  if (typeof v === 'string') return `"${v.length > 60 ? v.slice(0, 57) + '...' : v}"`;
  if (typeof v === 'number' || typeof v === 'bigint') return `${typeof v} ${String(v)}`;
  return typeof v;
}
