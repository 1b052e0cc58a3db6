/**
 * Trace points: the main steps of berth's work, published on Node's diagnostics channels
 * (`node:diagnostics_channel` tracing channels) so that the lower layers report what they
 * do without knowing who listens. Metrics (latency histograms, counters) and tracing
 * (OpenTelemetry spans) subscribe in src/telemetry; with no subscriber a trace point costs
 * a property check.
 *
 * A step is wrapped with {@link traced}: the channel publishes `start`, then `asyncEnd` or
 * `error` with the same context object, whose fields name what the step worked on. The
 * step runs in the caller's async context, so a span active around it (the RPC's) is the
 * parent of the span a subscriber opens at `start`.
 */
import { tracingChannel, type TracingChannel } from 'node:diagnostics_channel';

/** What each trace point's context carries. Ids are CRI ids; absent when not known. */
export interface TracePoints {
  /** One image pull, from resolving the reference to the image record. */
  'berth:image.pull': { image: string };
  /** One layer's download (fetch of the blob into the content store). */
  'berth:image.fetch': { image: string; digest: string; bytes?: number };
  /** One layer's unpack into its snapshot. */
  'berth:image.unpack': { image: string; digest: string };
  /** One CNI plugin invocation. */
  'berth:cni': { plugin: string; command: 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS' | 'VERSION'; podId?: string };
  /** One call of the OCI runtime's command line (runc/crun), by verb. */
  'berth:runtime': { handler: string; verb: string; containerId?: string };
  /** One mount(2) or umount2(2) through the addon. */
  'berth:mount': { op: 'mount' | 'umount'; target: string };
  /** The shim (conmon) creating a container, up to the init pid. */
  'berth:shim.create': { containerId: string };
  /** Inside the shim's create: from conmon's release (the bundle complete) to the runtime's create reporting the init pid. */
  'berth:shim.runtime-create': { containerId: string };
  /** A write transaction of the database. */
  'berth:db.write': { table: string };
  /** Start-up recovery, as a whole. */
  'berth:recovery': Record<string, never>;
  /** RunPodSandbox's checks before anything is made (runtime handler, network config, DNS). */
  'berth:pod.validate': Record<string, never>;
  /** Creating and pinning a pod's namespaces. */
  'berth:pod.namespaces': { podId: string };
  /** Making a pod's directory and its /dev/shm. */
  'berth:pod.dir': { podId: string };
  /** A pod's network: the loopback, then the CNI chain's ADD, recorded before and after. */
  'berth:pod.network': { podId: string };
  /** Starting a pod's infra process (shared PID namespace), beside its network. */
  'berth:pod.infra': { podId: string };
  /** Pinning the infra process's PID namespace. */
  'berth:pod.pidns': { podId: string };
  /** Writing a pod's hostname, hosts and resolv.conf. */
  'berth:pod.files': { podId: string };
  /** Finding a new container's image among the stored ones. */
  'berth:container.image': { image: string };
  /** Preparing a new container's writable snapshot on its image's layers. */
  'berth:container.snapshot': { containerId: string };
  /** Generating a new container's OCI runtime spec. */
  'berth:container.spec': { containerId: string };
}

export type TracePointName = keyof TracePoints;

const channels = new Map<TracePointName, TracingChannel<unknown, object>>();

/** The channel of a trace point (for subscribers). */
export function tracePoint<N extends TracePointName>(name: N): TracingChannel<unknown, TracePoints[N] & object> {
  let ch = channels.get(name);
  if (!ch) channels.set(name, (ch = tracingChannel(name)));
  return ch as TracingChannel<unknown, TracePoints[N] & object>;
}

/**
 * Runs `step` as trace point `name` with `context`. Subscribers may add to `context`
 * (e.g. a span) between `start` and the end; `step` may too (a byte count).
 */
export function traced<N extends TracePointName, T>(name: N, context: TracePoints[N], step: () => Promise<T>): Promise<T> {
  const ch = tracePoint(name);
  if (!ch.hasSubscribers) return step();
  return ch.tracePromise(step, context as TracePoints[N] & object);
}

/**
 * {@link traced} for a synchronous step (a database transaction). It publishes what
 * `traced` does: `start`, `error` if it threw, `end`, then `asyncStart` and `asyncEnd` at
 * once, so that subscribers see every step, synchronous or not, finish with `asyncEnd`.
 */
export function tracedSync<N extends TracePointName, T>(name: N, context: TracePoints[N], step: () => T): T {
  const ch = tracePoint(name);
  if (!ch.hasSubscribers) return step();
  const ctx = context as TracePoints[N] & { result?: unknown; error?: unknown };
  return ch.start.runStores(ctx, () => {
    try {
      const result = step();
      ctx.result = result;
      return result;
    } catch (err) {
      ctx.error = err;
      ch.error.publish(ctx);
      throw err;
    } finally {
      ch.end.publish(ctx);
      ch.asyncStart.publish(ctx);
      ch.asyncEnd.publish(ctx);
    }
  });
}
