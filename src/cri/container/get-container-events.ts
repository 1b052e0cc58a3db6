import type { ContainerEvent, ContainerEventType } from '../../containers/container-events.js';
import type { ContainerService } from '../../containers/container-service.js';
import type { ContainerEventResponse } from '../gen/runtime/v1/ContainerEventResponse.js';
import type { GetEventsRequest__Output } from '../gen/runtime/v1/GetEventsRequest.js';
import type { StreamHandler } from '../rpc.js';
import { criPodSandboxStatus } from '../sandbox/pod-sandbox-status.js';
import { criContainerStatus } from './container-status.js';

const CRI_TYPE = {
  created: 'CONTAINER_CREATED_EVENT',
  started: 'CONTAINER_STARTED_EVENT',
  stopped: 'CONTAINER_STOPPED_EVENT',
  deleted: 'CONTAINER_DELETED_EVENT',
} as const satisfies Record<ContainerEventType, string>;

/** An event as kubelet reads it: the pod's status and all its containers' statuses, as they were then. */
async function toResponse(svc: ContainerService, ev: ContainerEvent): Promise<ContainerEventResponse> {
  return {
    container_id: ev.containerId,
    container_event_type: CRI_TYPE[ev.type],
    created_at: ev.at,
    pod_sandbox_status: ev.sandbox ? criPodSandboxStatus(ev.sandbox) : null,
    containers_statuses: ev.containers.map((c) => criContainerStatus(svc, c)),
  };
}

/**
 * GetContainerEvents (kubelet's evented PLEG): every container's CREATED, STARTED,
 * STOPPED and DELETED, in order, from the moment of the call (plus the stops recovery
 * found, for a while after start-up; see containers/container-events.ts). The stream
 * runs until the caller cancels it or berthd drains (it then ends with OK); a caller that
 * reads too slowly for its queue is cut off with RESOURCE_EXHAUSTED. Each event is
 * converted once, whatever the number of subscribers.
 */
export const getContainerEvents = (svc: ContainerService): StreamHandler<GetEventsRequest__Output, ContainerEventResponse> => {
  const converted = new WeakMap<ContainerEvent, Promise<ContainerEventResponse>>();
  const convert = (ev: ContainerEvent): Promise<ContainerEventResponse> => {
    let res = converted.get(ev);
    if (!res) converted.set(ev, (res = toResponse(svc, ev)));
    return res;
  };
  return async (_req, ctx, send) => {
    const sub = svc.events.subscribe();
    const stop = AbortSignal.any([ctx.signal, ctx.draining]);
    const stopped = new Promise<void>((resolve) => stop.addEventListener('abort', () => resolve(), { once: true }));
    try {
      for (;;) {
        const ev = await sub.next(stop);
        if (ev !== undefined) {
          const res = await convert(ev);
          // A send that waits for the caller to read ends early if the caller is cut off or goes.
          await Promise.race([send(res), sub.cut, stopped]);
        }
        if (ctx.signal.aborted) throw ctx.signal.reason;
        if (ev === undefined || stop.aborted) return;
      }
    } finally {
      sub.close();
    }
  };
};
