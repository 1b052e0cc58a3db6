/**
 * The shape of berth's configuration, its defaults, and the validation of every key.
 *
 * The file format is TOML: `/etc/berth/config.toml`, then the drop-ins of
 * `/etc/berth/config.d/*.toml` in lexical order, then command-line flags, each layer
 * overriding the one before. Tables merge key by key; arrays and scalars replace.
 * Any key not declared here, or a value of the wrong type or range, is an error that
 * names the file and the key: a bad config never half-starts the daemon.
 */
import { isIP } from 'node:net';
import { LOG_LEVELS, type LogLevel } from '../common/logger.js';

export type CgroupDriver = 'cgroupfs' | 'systemd';

export interface CniConfig {
  /** Directory holding the CNI network configuration (`.conflist`, `.conf`, `.json`). */
  conf_dir: string;
  /** Directories searched, in order, for CNI plugin binaries. */
  bin_dirs: string[];
}

export interface ImagesConfig {
  /** References of images kubelet must never garbage-collect (reported as pinned). */
  pinned: string[];
  /** Layers downloaded at once per pull. */
  max_concurrent_downloads: number;
  /** Largest manifest or index berth reads, in bytes. */
  max_manifest_bytes: number;
  /** Largest image config berth reads, in bytes. */
  max_config_bytes: number;
  /** Largest uncompressed layer (tar stream) berth unpacks, in bytes. */
  max_layer_bytes: number;
  /** Largest uncompressed image (the sum of the layers a pull unpacks), in bytes. */
  max_image_bytes: number;
  /** Largest ratio of a layer's uncompressed to compressed size, past the threshold below. */
  max_compression_ratio: number;
  /** Uncompressed bytes a layer may reach whatever its compression ratio. */
  compression_ratio_threshold_bytes: number;
  /**
   * Free space a pull must leave on the image filesystem: the smaller of this many bytes
   * and `min_free_percent` of the filesystem.
   */
  min_free_bytes: number;
  min_free_percent: number;
  /**
   * Free inodes a pull must leave on the image filesystem: the smaller of this many and
   * `min_free_inodes_percent` of the filesystem's inodes (none on a filesystem without an
   * inode limit, such as btrfs).
   */
  min_free_inodes: number;
  min_free_inodes_percent: number;
  /** How deep an index may nest inside another index. */
  max_index_depth: number;
  /** Most layers an image manifest may list (refused before any download). */
  max_layers: number;
  /** Attempts per registry request on network errors, 429 and 5xx. */
  pull_attempts: number;
  /** A transfer that delivers no byte for this long is abandoned. */
  stall_timeout_seconds: number;
  /**
   * A transfer slower than this, measured over each `stall_timeout_seconds` window, is
   * abandoned as stalled (0: no floor).
   */
  min_transfer_rate_bytes_per_second: number;
  /**
   * A docker-style directory of per-registry certificates, `<dir>/<host>/` holding
   * `*.crt` (CAs), `client.cert` and `client.key`. Empty: `certs.d` beside the config file.
   */
  registry_certs_dir: string;
}

/** Per-registry settings, keyed by host[:port] as it appears in image references. */
export interface RegistryConfig {
  /** Tried in order before the registry itself, e.g. "http://127.0.0.1:5000". */
  mirrors: string[];
  /** Speak plain HTTP to this registry. Unset: only loopback registries do (as Docker). */
  plain_http?: boolean;
  /** Accept any TLS certificate from this registry. */
  insecure_skip_verify: boolean;
  /** A PEM file of CA certificates this registry's certificate may chain to (beside the system's). */
  ca_file?: string;
  /** A PEM client certificate and its key, for registries that require mutual TLS. */
  cert_file?: string;
  key_file?: string;
  /** Credentials for this registry (and its use as a mirror). Never logged. */
  username: string;
  password: string;
}

/** An OCI runtime handler (a RuntimeClass's `handler`). */
export interface RuntimeHandlerConfig {
  /** The runtime binary (runc or crun compatible). */
  path: string;
  /**
   * StartContainer opens a runc container's exec.fifo itself, as `runc start` would,
   * instead of running `runc start` (runc 1.x only, containers without OCI hooks; `runc
   * start` otherwise). Unset (a handler table of the user's own): true.
   */
  fifo_start?: boolean;
}

export interface SandboxConfig {
  /** Size of a pod's /dev/shm when the pod does not say (bytes). */
  shm_size_bytes: number;
  /** Longest a CNI plugin may run for one ADD/CHECK/DEL. */
  cni_timeout_seconds: number;
  /**
   * The static init that is PID 1 of a pod sharing one PID namespace (Debian's
   * catatonit, run in pause mode); bind-mounted into an empty rootfs, so no image.
   */
  infra_path: string;
}

/** The Container Device Interface: where device vendors' spec files are read from. */
export interface CdiConfig {
  /** Spec directories, lowest priority first: a later one wins for the same device. */
  spec_dirs: string[];
}

/** The streaming server that Exec, Attach and PortForward hand out URLs of. */
export interface StreamingConfig {
  /** Address it listens on; loopback by default, as kubelet proxies the streams. */
  address: string;
  /** TCP port; 0 picks a free one at start-up. */
  port: number;
  /** How long a URL handed out by Exec/Attach/PortForward may wait to be used (it is single-use). */
  token_ttl_seconds: number;
  /** A stream with no traffic for this long is closed (0: never). */
  idle_timeout_seconds: number;
  /** How long the client has to open the streams it asked for after the upgrade. */
  stream_creation_timeout_seconds: number;
}

/** OpenTelemetry tracing: spans exported over OTLP/gRPC (see README, "Tracing"). */
export interface TracingConfig {
  /**
   * The OTLP/gRPC collector: "host:port" (plaintext gRPC) or "https://host:port" (TLS).
   * "" leaves tracing off unless OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
   * OTEL_EXPORTER_OTLP_ENDPOINT names one.
   */
  endpoint: string;
  /** Root spans sampled per million (as containerd and CRI-O); a caller's sampled trace is always continued. */
  sampling_rate_per_million: number;
  /** The `service.name` of berth's spans. */
  service_name: string;
}

/** GetContainerEvents (kubelet's evented PLEG). */
export interface EventsConfig {
  /** Events one subscriber may fall behind by before it is cut off with RESOURCE_EXHAUSTED. */
  subscriber_queue_size: number;
}

/** The metrics endpoint: /metrics and /metrics/cadvisor in the Prometheus text format. */
export interface MetricsConfig {
  /** "host:port" it listens on (plain HTTP; loopback by default); "" turns it off. */
  address: string;
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
  images: ImagesConfig;
  registries: Record<string, RegistryConfig>;
  sandbox: SandboxConfig;
  streaming: StreamingConfig;
  cdi: CdiConfig;
  tracing: TracingConfig;
  events: EventsConfig;
  metrics: MetricsConfig;
  /** The handler used when a pod names none. */
  default_runtime: string;
  runtimes: Record<string, RuntimeHandlerConfig>;
}

export function defaultRegistryConfig(): RegistryConfig {
  return { mirrors: [], insecure_skip_verify: false, username: '', password: '' };
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
    images: {
      pinned: [],
      max_concurrent_downloads: 3,
      max_manifest_bytes: 4 * 1024 * 1024,
      max_config_bytes: 8 * 1024 * 1024,
      max_layer_bytes: 32 * 1024 * 1024 * 1024,
      max_image_bytes: 64 * 1024 * 1024 * 1024,
      max_compression_ratio: 100,
      compression_ratio_threshold_bytes: 1024 * 1024 * 1024,
      min_free_bytes: 2 * 1024 * 1024 * 1024,
      min_free_percent: 5,
      min_free_inodes: 100_000,
      min_free_inodes_percent: 5,
      max_index_depth: 4,
      max_layers: 500,
      pull_attempts: 3,
      stall_timeout_seconds: 30,
      min_transfer_rate_bytes_per_second: 10 * 1024,
      registry_certs_dir: '',
    },
    registries: {},
    sandbox: {
      shm_size_bytes: 64 * 1024 * 1024,
      cni_timeout_seconds: 60,
      infra_path: '/usr/bin/catatonit',
    },
    streaming: {
      address: '127.0.0.1',
      port: 0,
      token_ttl_seconds: 60,
      idle_timeout_seconds: 4 * 3600,
      stream_creation_timeout_seconds: 30,
    },
    cdi: {
      spec_dirs: ['/etc/cdi', '/var/run/cdi'],
    },
    tracing: {
      endpoint: '',
      sampling_rate_per_million: 0,
      service_name: 'berth',
    },
    events: {
      subscriber_queue_size: 1000,
    },
    metrics: {
      address: '127.0.0.1:9102',
    },
    default_runtime: 'runc',
    runtimes: {
      runc: { path: '/usr/sbin/runc', fifo_start: true },
      crun: { path: '/usr/bin/crun', fifo_start: true },
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

const oneOf =
  (values: readonly string[]): Check =>
  (v) =>
    typeof v === 'string' && values.includes(v) ? undefined : `expected one of ${values.map((x) => `"${x}"`).join(', ')}, got ${describe(v)}`;

const integerIn =
  (min: number, max: number): Check =>
  (v) =>
    typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max ? undefined : `expected an integer from ${min} to ${max}, got ${describe(v)}`;

const pathList: Check = (v) => {
  if (!Array.isArray(v)) return `expected an array of absolute paths, got ${describe(v)}`;
  for (const [i, item] of v.entries()) {
    const why = absolutePath(item);
    if (why) return `item ${i}: ${why}`;
  }
  return undefined;
};

const urlList: Check = (v) => {
  if (!Array.isArray(v)) return `expected an array of URLs, got ${describe(v)}`;
  for (const [i, item] of v.entries()) {
    if (typeof item !== 'string') return `item ${i}: expected a URL string, got ${describe(item)}`;
    let u: URL;
    try {
      u = new URL(item);
    } catch {
      return `item ${i}: "${item}" is not a URL like http://127.0.0.1:5000 or https://mirror.example.com`;
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return `item ${i}: "${item}" must be http:// or https://`;
    if (u.username || u.password) return `item ${i}: put credentials in the mirror's own [registries."host"] table, not in the URL`;
  }
  return undefined;
};

/** "" (off), or "ip:port" / "[ipv6]:port". */
const listenAddress: Check = (v) => {
  if (v === '') return undefined;
  const m = typeof v === 'string' ? /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(v) : null;
  const host = m?.[1] ?? m?.[2];
  if (!m || host === undefined || isIP(host) === 0 || Number(m[3]) > 65535) {
    return `expected "ip:port" such as "127.0.0.1:9102" (or "" for off), got ${describe(v)}`;
  }
  return undefined;
};

const boolean: Check = (v) => (typeof v === 'boolean' ? undefined : `expected true or false, got ${describe(v)}`);
const string: Check = (v) => (typeof v === 'string' ? undefined : `expected a string, got ${describe(v)}`);

/**
 * Every key berth knows, by dotted name. A table is declared by the keys under it;
 * `*` stands for a key the user chooses (a registry host such as "docker.io").
 */
export const SCHEMA: Readonly<Record<string, Check>> = {
  socket: absolutePath,
  root: absolutePath,
  state: absolutePath,
  log_level: oneOf(LOG_LEVELS),
  cgroup_driver: oneOf(['cgroupfs', 'systemd']),
  shutdown_timeout_seconds: integerIn(0, 3600),
  'cni.conf_dir': absolutePath,
  'cni.bin_dirs': pathList,
  'images.pinned': (v) =>
    Array.isArray(v) && v.every((x) => typeof x === 'string' && x !== '') ? undefined : `expected an array of image references, got ${describe(v)}`,
  'images.max_concurrent_downloads': integerIn(1, 64),
  'images.max_manifest_bytes': integerIn(1024, 64 * 1024 * 1024),
  'images.max_config_bytes': integerIn(1024, 64 * 1024 * 1024),
  'images.max_layer_bytes': integerIn(1024 * 1024, Number.MAX_SAFE_INTEGER),
  'images.max_image_bytes': integerIn(1024 * 1024, Number.MAX_SAFE_INTEGER),
  'images.max_compression_ratio': integerIn(1, 1_000_000),
  'images.compression_ratio_threshold_bytes': integerIn(0, Number.MAX_SAFE_INTEGER),
  'images.min_free_bytes': integerIn(0, Number.MAX_SAFE_INTEGER),
  'images.min_free_percent': integerIn(0, 100),
  'images.min_free_inodes': integerIn(0, Number.MAX_SAFE_INTEGER),
  'images.min_free_inodes_percent': integerIn(0, 100),
  'images.max_index_depth': integerIn(1, 16),
  'images.max_layers': integerIn(1, 10_000),
  'images.pull_attempts': integerIn(1, 10),
  'images.stall_timeout_seconds': integerIn(1, 3600),
  'images.min_transfer_rate_bytes_per_second': integerIn(0, 1024 * 1024 * 1024),
  'images.registry_certs_dir': (v) => (v === '' ? undefined : absolutePath(v)),
  'registries.*.mirrors': urlList,
  'registries.*.plain_http': boolean,
  'registries.*.insecure_skip_verify': boolean,
  'registries.*.ca_file': absolutePath,
  'registries.*.cert_file': absolutePath,
  'registries.*.key_file': absolutePath,
  'registries.*.username': string,
  'registries.*.password': string,
  'sandbox.shm_size_bytes': integerIn(1024 * 1024, 64 * 1024 * 1024 * 1024),
  'sandbox.cni_timeout_seconds': integerIn(1, 3600),
  'sandbox.infra_path': absolutePath,
  'streaming.address': (v) => (typeof v === 'string' && isIP(v) !== 0 ? undefined : `expected an IP address such as "127.0.0.1", got ${describe(v)}`),
  'streaming.port': integerIn(0, 65535),
  'streaming.token_ttl_seconds': integerIn(1, 3600),
  'streaming.idle_timeout_seconds': integerIn(0, 7 * 24 * 3600),
  'streaming.stream_creation_timeout_seconds': integerIn(1, 600),
  'cdi.spec_dirs': pathList,
  'tracing.endpoint': (v) => {
    if (typeof v !== 'string') return `expected a string "host:port" such as "127.0.0.1:4317", got ${describe(v)}`;
    if (v === '') return undefined;
    const m = /^(?:(https?):\/\/)?([^/\s]+)$/.exec(v);
    const port = m && URL.canParse(`${m[1] ?? 'http'}://${m[2]}`) ? new URL(`${m[1] ?? 'http'}://${m[2]}`).port : '';
    return port !== '' ? undefined : `expected "host:port" or "https://host:port" of an OTLP/gRPC collector, got ${describe(v)}`;
  },
  'tracing.sampling_rate_per_million': integerIn(0, 1_000_000),
  'tracing.service_name': (v) => (typeof v === 'string' && v.trim() !== '' ? undefined : `expected a non-empty service name, got ${describe(v)}`),
  'events.subscriber_queue_size': integerIn(1, 1_000_000),
  'metrics.address': listenAddress,
  default_runtime: (v) =>
    typeof v === 'string' && /^[a-z0-9][a-z0-9.-]{0,62}$/.test(v) ? undefined : `expected a handler name like "runc", got ${describe(v)}`,
  'runtimes.*.path': absolutePath,
  'runtimes.*.fifo_start': boolean,
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
