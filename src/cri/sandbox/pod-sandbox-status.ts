import { nowNs } from '../../common/clock.js';
import type { SandboxService } from '../../sandbox/sandbox-service.js';
import type { PodSandboxStatusRequest__Output } from '../gen/runtime/v1/PodSandboxStatusRequest.js';
import type { PodSandboxStatusResponse } from '../gen/runtime/v1/PodSandboxStatusResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireId, toCriPodSandbox } from './convert.js';

interface StoredNamespaces {
  linux?: { security_context?: { namespace_options?: { network?: string; pid?: string; ipc?: string } } };
}

/** PodSandboxStatus: NOT_FOUND for an unknown id; `verbose` adds berth's own view in info["info"]. */
export const podSandboxStatus =
  (svc: SandboxService): UnaryHandler<PodSandboxStatusRequest__Output, PodSandboxStatusResponse> =>
  async (req) => {
    const id = requireId(req.pod_sandbox_id, 'pod_sandbox_id');
    const rec = svc.requireSandbox(id);
    const base = toCriPodSandbox(rec);
    const nsOpts = (rec.config as StoredNamespaces).linux?.security_context?.namespace_options ?? {};
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
      status: {
        ...base,
        network: { ip: rec.ips[0] ?? '', additional_ips: rec.ips.slice(1).map((ip) => ({ ip })) },
        linux: {
          namespaces: {
            options: { network: (nsOpts.network ?? 'POD') as 'POD', pid: (nsOpts.pid ?? 'POD') as 'POD', ipc: (nsOpts.ipc ?? 'POD') as 'POD', target_id: '' },
          },
        },
      },
      info,
      containers_statuses: [],
      timestamp: nowNs(),
    };
  };
