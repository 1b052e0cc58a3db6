import type { CriDeps } from '../deps.js';
import type { RuntimeConfigRequest__Output } from '../gen/runtime/v1/RuntimeConfigRequest.js';
import type { RuntimeConfigResponse } from '../gen/runtime/v1/RuntimeConfigResponse.js';
import type { UnaryHandler } from '../rpc.js';

/** RuntimeConfig: the cgroup driver in use, which kubelet (1.28+) adopts instead of its own flag. */
export const runtimeConfig =
  (deps: CriDeps): UnaryHandler<RuntimeConfigRequest__Output, RuntimeConfigResponse> =>
  async () => ({
    linux: { cgroup_driver: deps.config.cgroup_driver === 'systemd' ? 'SYSTEMD' : 'CGROUPFS' },
  });
