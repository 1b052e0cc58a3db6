import { nowNs } from '../../common/clock.js';
import type { SandboxRecord } from '../../sandbox/sandbox-repository.js';
import type { SandboxService } from '../../sandbox/sandbox-service.js';
import type { PodSandboxStatus } from '../gen/runtime/v1/PodSandboxStatus.js';
import type { PodSandboxStatusRequest__Output } from '../gen/runtime/v1/PodSandboxStatusRequest.js';
import type { PodSandboxStatusResponse } from '../gen/runtime/v1/PodSandboxStatusResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireId, toCriPodSandbox } from './convert.js';

interface StoredNamespaces {
  linux?: { security_context?: { namespace_options?: { network?: string; pid?: string; ipc?: string } } };
}

/** A pod's CRI status from its record. PodSandboxStatus answers with it; GetContainerEvents attaches it. */
export function criPodSandboxStatus(rec: SandboxRecord): PodSandboxStatus {
  const nsOpts = (rec.config as StoredNamespaces).linux?.security_context?.namespace_options ?? {};
  return {
    ...toCriPodSandbox(rec),
    network: { ip: rec.ips[0] ?? '', additional_ips: rec.ips.slice(1).map((ip) => ({ ip })) },
    linux: {
      namespaces: {
        options: { network: (nsOpts.network ?? 'POD') as 'POD', pid: (nsOpts.pid ?? 'POD') as 'POD', ipc: (nsOpts.ipc ?? 'POD') as 'POD', target_id: '' },
      },
    },
  };
}

/** PodSandboxStatus: NOT_FOUND for an unknown id; `verbose` adds berth's own view in info["info"]. */
export const podSandboxStatus =
  (svc: SandboxService): UnaryHandler<PodSandboxStatusRequest__Output, PodSandboxStatusResponse> =>
  async (req) => {
    const id = requireId(req.pod_sandbox_id, 'pod_sandbox_id');
    const rec = svc.requireSandbox(id);
    const info: Record<string, string> = {};
    if (req.verbose) {
      info.info = JSON.stringify({
        id: rec.id,
        state: rec.state,
        nsDir: rec.nsDir,
        podDir: svc.podDir(rec.id),
        runtimeHandler: rec.runtimeHandler,
        cni: rec.network,
        config: rec.config,
      });
    }
    return {
      status: criPodSandboxStatus(rec),
      info,
      containers_statuses: [],
      timestamp: nowNs(),
    };
  };
