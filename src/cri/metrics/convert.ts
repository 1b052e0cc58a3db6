/**
 * The KEP-2371 shapes of the cAdvisor samples (telemetry/cadvisor.ts), shared by
 * ListMetricDescriptors, ListPodSandboxMetrics and StreamPodSandboxMetrics: the same
 * names, labels and values as /metrics/cadvisor. A metric's `label_values` follow its
 * descriptor's `label_keys`; values are integers (seconds are whole seconds); timestamps
 * are nanoseconds since the epoch.
 */
import { CADVISOR_LABELS, CADVISOR_METRICS, type CadvisorPodSample, type CadvisorTarget, type CadvisorUsage } from '../../telemetry/cadvisor.js';
import type { Metric } from '../gen/runtime/v1/Metric.js';
import type { MetricDescriptor } from '../gen/runtime/v1/MetricDescriptor.js';
import type { PodSandboxMetrics } from '../gen/runtime/v1/PodSandboxMetrics.js';

/** Every metric's descriptor. */
export function metricDescriptors(): MetricDescriptor[] {
  return CADVISOR_METRICS.map((m) => ({ name: m.name, help: m.help, label_keys: [...CADVISOR_LABELS, ...m.extraLabels] }));
}

function metrics(target: CadvisorTarget, u: CadvisorUsage): Metric[] {
  const base = CADVISOR_LABELS.map((l) => target[l]);
  const timestamp = (BigInt(u.timestampMs) * 1_000_000n).toString();
  return CADVISOR_METRICS.flatMap((m) =>
    m.points(u).map((pt) => ({
      name: m.name,
      timestamp,
      metric_type: m.type === 'counter' ? ('COUNTER' as const) : ('GAUGE' as const),
      label_values: [...base, ...pt.extra],
      value: { value: (m.scale === 1 ? pt.value : pt.value / BigInt(m.scale)).toString() },
    })),
  );
}

/** One pod's metrics: its own, and each running container's. */
export function toPodSandboxMetrics(p: CadvisorPodSample): PodSandboxMetrics {
  return {
    pod_sandbox_id: p.id,
    metrics: metrics(p.target, p.usage),
    container_metrics: p.containers.map((c) => ({ container_id: c.id, metrics: metrics(c.target, c.usage) })),
  };
}
