import { parseCidr } from '../../common/cidr.js';
import { invalidArgument } from '../../common/errors.js';
import type { CriDeps } from '../deps.js';
import type { UpdateRuntimeConfigRequest__Output } from '../gen/runtime/v1/UpdateRuntimeConfigRequest.js';
import type { UpdateRuntimeConfigResponse } from '../gen/runtime/v1/UpdateRuntimeConfigResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { boundedString, required } from '../validate.js';

/**
 * UpdateRuntimeConfig: kubelet pushes the node's pod CIDR (comma-separated for dual
 * stack). berth records it durably so the pod network can use it after a restart;
 * an empty value clears it.
 */
export const updateRuntimeConfig =
  (deps: CriDeps): UnaryHandler<UpdateRuntimeConfigRequest__Output, UpdateRuntimeConfigResponse> =>
  async (req) => {
    const rc = required(req.runtime_config, 'runtime_config');
    const field = 'runtime_config.network_config.pod_cidr';
    const podCidr = boundedString(required(rc.network_config, 'runtime_config.network_config').pod_cidr.trim(), field, 256);
    if (podCidr !== '') {
      const parts = podCidr.split(',').map((s) => s.trim());
      if (parts.length > 2) throw invalidArgument(`${field}: at most two CIDRs (one per IP family), got ${parts.length}`);
      for (const p of parts) {
        if (!parseCidr(p)) throw invalidArgument(`${field}: "${p}" is not a CIDR like 10.244.0.0/24 or fd00::/64`);
      }
      if (parts.length === 2 && parseCidr(parts[0]!)!.family === parseCidr(parts[1]!)!.family) {
        throw invalidArgument(`${field}: two CIDRs of the same IP family ("${podCidr}")`);
      }
    }
    const previous = deps.settings.podCidr();
    if (previous !== podCidr) {
      deps.settings.setPodCidr(podCidr);
      deps.log.info('pod CIDR updated', { pod_cidr: podCidr, previous });
    }
    return {};
  };
