/**
 * OpenTelemetry tracing, switched on by configuration. This file decides whether tracing
 * runs and where spans go; it imports nothing of OpenTelemetry. Only when a collector is
 * configured is the SDK loaded (a dynamic import of otel-tracing.ts), so a node without
 * tracing pays no memory or start-up time for it.
 *
 * Precedence, highest first:
 * - `OTEL_SDK_DISABLED=true` turns tracing off whatever else says;
 * - `[tracing] endpoint` in berth's configuration;
 * - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`, the standard
 *   variables, when the configuration leaves the endpoint "".
 * The other `OTEL_*` variables are read by the SDK itself where it reads them (exporter
 * headers, timeout, compression, certificates; batch processor delays; resource
 * attributes, of which `OTEL_SERVICE_NAME` wins over a `service_name` left at "berth").
 */
import type { Logger } from '../common/logger.js';
import type { Tracing, TracingInfo, TracingSettings } from './tracing-types.js';

export type * from './tracing-types.js';

/** Where spans go, or undefined when tracing is off. */
export function tracingEndpoint(settings: Pick<TracingSettings, 'endpoint'>, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return undefined;
  const configured = settings.endpoint.trim();
  if (configured !== '') return /^[a-z][a-z0-9+.-]*:\/\//i.test(configured) ? configured : `http://${configured}`;
  const fromEnv = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim();
  return fromEnv || undefined;
}

/** Off: what Status reports when no collector is configured. */
export const TRACING_OFF: TracingInfo = { enabled: false };

/**
 * Starts tracing when a collector is configured (see the precedence above); undefined
 * when tracing is off, in which case nothing of OpenTelemetry was loaded.
 */
export async function startTracing(settings: TracingSettings, log: Logger, env: NodeJS.ProcessEnv = process.env): Promise<Tracing | undefined> {
  const endpoint = tracingEndpoint(settings, env);
  if (endpoint === undefined) return undefined;
  const { createOtelTracing } = await import('./otel-tracing.js');
  return createOtelTracing({ ...settings, endpoint }, log);
}
