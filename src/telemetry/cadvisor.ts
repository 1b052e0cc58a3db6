/**
 * Per-container and per-pod usage under cAdvisor's metric names and labels, so that a
 * Prometheus scraping /metrics/cadvisor (or kubelet reading ListPodSandboxMetrics,
 * KEP-2371) sees what it would see from cAdvisor on a node that runs none.
 *
 * The samples are plain values (no domain types): the stats module builds them from the
 * cached collector the stats RPCs use, this module names and renders them. Labels are
 * `container`, `id`, `image`, `namespace`, `pod` (the pod's own series have `container=""`,
 * as cAdvisor's pod cgroup series do) plus a metric's own (`interface`, `device`, ...).
 * `id` is the CRI id of the container or pod sandbox. Counters in seconds are exact in the
 * text format; over CRI, whose values are integers, they are whole seconds.
 */
import { escapeLabel, formatLabels, formatValue, type Family } from './exposition.js';

/** The labels of every cAdvisor series, in the order the CRI descriptors list them. */
export const CADVISOR_LABELS = ['container', 'id', 'image', 'namespace', 'pod'] as const;

export type CadvisorTarget = Record<(typeof CADVISOR_LABELS)[number], string>;

/** Usage of one container or pod, each figure absent when the host does not report it. */
export interface CadvisorUsage {
  /** Milliseconds since the epoch when the figures were read. */
  timestampMs: number;
  cpuUsageNs?: bigint;
  memoryUsage?: bigint;
  workingSet?: bigint;
  rss?: bigint;
  swap?: bigint;
  /** The memory limit; 0 when there is none, as cAdvisor reports it. */
  memoryLimit?: bigint;
  pageFaults?: bigint;
  majorPageFaults?: bigint;
  oomEvents?: bigint;
  processes?: bigint;
  /** The writable layer: the image filesystem's mount point and the bytes used. */
  fs?: { device: string; bytes: bigint };
  network?: Array<{ name: string; rxBytes: bigint; rxErrors: bigint; txBytes: bigint; txErrors: bigint }>;
}

export interface CadvisorContainerSample {
  id: string;
  target: CadvisorTarget;
  usage: CadvisorUsage;
}

export interface CadvisorPodSample {
  id: string;
  target: CadvisorTarget;
  usage: CadvisorUsage;
  containers: CadvisorContainerSample[];
}

/** One value of a metric: its extra label values (in `extraLabels` order) and the raw value. */
export interface CadvisorPoint {
  extra: string[];
  value: bigint;
}

/** A cAdvisor metric: its name, help, type, extra labels and how to read it from a usage. */
export interface CadvisorMetric {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  extraLabels: readonly string[];
  /** The raw value is divided by this to give the metric's unit (ns to seconds). */
  scale: number;
  points(u: CadvisorUsage): CadvisorPoint[];
}

const one = (v: bigint | undefined): CadvisorPoint[] => (v === undefined ? [] : [{ extra: [], value: v }]);

const simple = (name: string, help: string, type: 'counter' | 'gauge', get: (u: CadvisorUsage) => bigint | undefined, scale = 1): CadvisorMetric => ({
  name,
  help,
  type,
  extraLabels: [],
  scale,
  points: (u) => one(get(u)),
});

const network = (name: string, help: string, get: (i: NonNullable<CadvisorUsage['network']>[number]) => bigint): CadvisorMetric => ({
  name,
  help,
  type: 'counter',
  extraLabels: ['interface'],
  scale: 1,
  points: (u) => (u.network ?? []).map((i) => ({ extra: [i.name], value: get(i) })),
});

/** The metrics served, in this order, by /metrics/cadvisor and ListMetricDescriptors. */
export const CADVISOR_METRICS: readonly CadvisorMetric[] = [
  simple('container_cpu_usage_seconds_total', 'Cumulative cpu time consumed in seconds.', 'counter', (u) => u.cpuUsageNs, 1e9),
  simple(
    'container_memory_usage_bytes',
    'Current memory usage in bytes, including all memory regardless of when it was accessed.',
    'gauge',
    (u) => u.memoryUsage,
  ),
  simple('container_memory_working_set_bytes', 'Current working set in bytes.', 'gauge', (u) => u.workingSet),
  simple('container_memory_rss', 'Size of RSS in bytes.', 'gauge', (u) => u.rss),
  simple('container_memory_swap', 'Container swap usage in bytes.', 'gauge', (u) => u.swap),
  {
    name: 'container_memory_failures_total',
    help: 'Cumulative count of memory allocation failures.',
    type: 'counter',
    extraLabels: ['failure_type', 'scope'],
    scale: 1,
    points: (u) => [
      ...(u.pageFaults !== undefined ? [{ extra: ['pgfault', 'container'], value: u.pageFaults }] : []),
      ...(u.majorPageFaults !== undefined ? [{ extra: ['pgmajfault', 'container'], value: u.majorPageFaults }] : []),
    ],
  },
  simple('container_spec_memory_limit_bytes', 'Memory limit for the container.', 'gauge', (u) => u.memoryLimit),
  simple('container_oom_events_total', 'Count of out of memory events observed for the container.', 'counter', (u) => u.oomEvents),
  simple('container_processes', 'Number of processes running inside the container.', 'gauge', (u) => u.processes),
  {
    name: 'container_fs_usage_bytes',
    help: 'Number of bytes that are consumed by the container on this filesystem.',
    type: 'gauge',
    extraLabels: ['device'],
    scale: 1,
    points: (u) => (u.fs ? [{ extra: [u.fs.device], value: u.fs.bytes }] : []),
  },
  network('container_network_receive_bytes_total', 'Cumulative count of bytes received.', (i) => i.rxBytes),
  network('container_network_receive_errors_total', 'Cumulative count of errors encountered while receiving.', (i) => i.rxErrors),
  network('container_network_transmit_bytes_total', 'Cumulative count of bytes transmitted.', (i) => i.txBytes),
  network('container_network_transmit_errors_total', 'Cumulative count of errors encountered while transmitting.', (i) => i.txErrors),
];

/** A raw value in the metric's unit, as the text format writes it. */
function scaled(m: CadvisorMetric, v: bigint): string {
  return m.scale === 1 ? formatValue(v) : formatValue(Number(v) / m.scale);
}

/** Every series of every pod and container, as text-format families. */
export function cadvisorFamilies(pods: readonly CadvisorPodSample[]): Family[] {
  const targets = pods.flatMap((p) => [{ target: p.target, usage: p.usage }, ...p.containers]);
  return CADVISOR_METRICS.map((m) => ({
    name: m.name,
    help: m.help,
    type: m.type,
    write(out: string[]) {
      for (const { target, usage } of targets) {
        for (const pt of m.points(usage)) {
          const extra = m.extraLabels.map((l, i) => `,${l}="${escapeLabel(pt.extra[i] ?? '')}"`).join('');
          const base = formatLabels(CADVISOR_LABELS, target);
          out.push(`${m.name}${base.slice(0, -1)}${extra}} ${scaled(m, pt.value)}`);
        }
      }
    },
  }));
}
