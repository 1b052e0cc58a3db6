import { nowNs } from '../../common/clock.js';
import type { SandboxRecord } from '../../sandbox/sandbox-repository.js';
import type { SandboxService } from '../../sandbox/sandbox-service.js';
import type { PodSandboxStatus } from '../gen/runtime/v1/PodSandboxStatus.js';
import type { PodSandboxStatusRequest__Output } from '../gen/runtime/v1/PodSandboxStatusRequest.js';
import type { PodSandboxStatusResponse } from '../gen/runtime/v1/PodSandboxStatusResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { keptAnswer, keptAnswerWith } from '../wrap.js';
import { requireId, toCriPodSandbox } from './convert.js';

/**
 * The status made of each record, and the answer kept with it: a record is not changed
 * once read, and the repository hands out the same one until the row changes (kubelet's
 * PLEG asks every second). Only the answer's timestamp is made (and encoded) at each call.
 */
const made = new WeakMap<SandboxRecord, { status: PodSandboxStatus; answer: PodSandboxStatusResponse }>();

function madeFor(rec: SandboxRecord): { status: PodSandboxStatus; answer: PodSandboxStatusResponse } {
  let entry = made.get(rec);
  if (entry === undefined) {
    const status = statusOf(rec);
    made.set(rec, (entry = { status, answer: keptAnswer<PodSandboxStatusResponse>({ status, info: {}, containers_statuses: [] }) }));
  }
  return entry;
}

/** A pod's CRI status from its record. PodSandboxStatus answers with it; GetContainerEvents attaches it. */
export function criPodSandboxStatus(rec: SandboxRecord): PodSandboxStatus {
  return madeFor(rec).status;
}

function statusOf(rec: SandboxRecord): PodSandboxStatus {
  const modes = rec.facts.namespaces;
  return {
    ...toCriPodSandbox(rec),
    network: { ip: rec.ips[0] ?? '', additional_ips: rec.ips.slice(1).map((ip) => ({ ip })) },
    linux: {
      namespaces: {
        options: { network: modes.network, pid: modes.pid, ipc: modes.ipc, target_id: '' },
      },
    },
  };
}

/**
 * PodSandboxStatus: NOT_FOUND for an unknown id; `verbose` adds berth's own view in
 * info["info"], with the recorded overhead and resources and the config as kubelet sent it,
 * and the pod's timeline (RunPodSandbox, then StopPodSandbox) in info["timeline"]: a JSON array of
 * `{step, rpc, start, duration_ms, depth}` (common/timeline.ts).
 */
export const podSandboxStatus =
  (svc: SandboxService): UnaryHandler<PodSandboxStatusRequest__Output, PodSandboxStatusResponse> =>
  async (req) => {
    const id = requireId(req.pod_sandbox_id, 'pod_sandbox_id');
    const rec = svc.requireSandbox(id);
    if (!req.verbose) return keptAnswerWith(madeFor(rec).answer, { timestamp: nowNs() });
    const info: Record<string, string> = {
      info: JSON.stringify({
        id: rec.id,
        state: rec.state,
        nsDir: rec.nsDir,
        podDir: svc.podDir(rec.id),
        runtimeHandler: rec.runtimeHandler,
        cni: rec.network,
        overhead: rec.facts.overhead,
        resources: rec.facts.resources,
        config: rec.request,
      }),
      timeline: JSON.stringify(rec.facts.timeline ?? []),
    };
    return {
      status: criPodSandboxStatus(rec),
      info,
      containers_statuses: [],
      timestamp: nowNs(),
    };
  };
