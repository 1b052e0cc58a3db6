import { redactedConfig } from '../../config/load.js';
import { findNetwork } from '../../sandbox/cni/conf-dir.js';
import type { CriDeps } from '../deps.js';
import type { StatusRequest__Output } from '../gen/runtime/v1/StatusRequest.js';
import type { StatusResponse } from '../gen/runtime/v1/StatusResponse.js';
import type { UnaryHandler } from '../rpc.js';

/**
 * Status: RuntimeReady and NetworkReady, as kubelet reads them to decide whether the
 * node is ready. The network is ready once the CNI conf dir holds a usable config; the
 * dir is read on each call (kubelet polls every few seconds), so a config installed
 * later is noticed without a restart. `verbose` adds the effective config to `info`
 * (values are JSON, as crictl expects).
 */
export const status =
  (deps: CriDeps): UnaryHandler<StatusRequest__Output, StatusResponse> =>
  async (req) => {
    const net = await findNetwork(deps.config.cni.conf_dir);
    const info: Record<string, string> = {};
    if (req.verbose) {
      info.config = JSON.stringify(redactedConfig(deps.config));
      info.cni = JSON.stringify(
        net.found
          ? { status: 'OK', file: net.network.file, name: net.network.name, plugins: net.network.plugins.map((p) => p.type), skipped: net.skipped }
          : { status: 'NotReady', reason: net.reason },
      );
      const podCidr = deps.settings.podCidr();
      if (podCidr !== '') info.podCIDR = JSON.stringify(podCidr);
    }
    return {
      status: {
        conditions: [
          { type: 'RuntimeReady', status: true, reason: '', message: '' },
          net.found
            ? { type: 'NetworkReady', status: true, reason: '', message: '' }
            : { type: 'NetworkReady', status: false, reason: 'NetworkPluginNotReady', message: `Network plugin returns error: ${net.reason}` },
        ],
      },
      info,
    };
  };
