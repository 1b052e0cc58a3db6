import type { BerthConfig } from '../../config/schema.js';
import { redactedConfig } from '../../config/load.js';
import { join } from 'node:path';
import { mountFeatures, type MountFeatures } from '../../common/mount-probes.js';
import { appArmorFacility, criuFacility, handlerFeatures, seLinuxFacility, supplementalGroupsPolicy } from '../../oci/features.js';
import { findNetwork } from '../../sandbox/cni/conf-dir.js';
import type { CriDeps } from '../deps.js';
import type { StatusRequest__Output } from '../gen/runtime/v1/StatusRequest.js';
import type { RuntimeHandler } from '../gen/runtime/v1/RuntimeHandler.js';
import type { StatusResponse } from '../gen/runtime/v1/StatusResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { TRACING_OFF } from '../../telemetry/tracing.js';

/**
 * Every configured handler with its features (oci/features.ts, from the mount probes): the default
 * handler first under the name "" (CRI: an empty name denotes the default handler; kubelet
 * uses it for pods without a RuntimeClass), then each handler by its name, the default
 * one included, as containerd lists them.
 */
export function runtimeHandlerList(config: Pick<BerthConfig, 'default_runtime' | 'runtimes'>, probes: MountFeatures): RuntimeHandler[] {
  const features = (name: string) => {
    const f = handlerFeatures(config.runtimes[name]!.path, probes);
    return { recursive_read_only_mounts: f.recursiveReadOnlyMounts, user_namespaces: f.userNamespaces };
  };
  const named = Object.keys(config.runtimes)
    .sort()
    .map((name) => ({ name, features: features(name) }));
  const def = named.find((h) => h.name === config.default_runtime);
  return def ? [{ name: '', features: def.features }, ...named] : named;
}

/**
 * Status: RuntimeReady and NetworkReady, as kubelet reads them to decide whether the
 * node is ready. The network is ready once the CNI conf dir holds a usable config; the
 * dir is read on each call (kubelet polls every few seconds), so a config installed
 * later is noticed without a restart. `runtime_handlers` and `features` say what kubelet
 * may ask of each handler (see {@link runtimeHandlerList}). `verbose` adds the effective
 * config to `info`, and under `hostFeatures` the facilities the host has or lacks
 * (AppArmor, SELinux, CRIU) with the reason, under `metrics` whether the metrics endpoint
 * serves and where (or why not), and under `tracing` the span exporter's health
 * and its exported and dropped span counts, and under `counts` the live counts (pods and
 * containers per state, live shims, pulls, event subscribers and streaming sessions under
 * way); values are JSON, as crictl expects.
 */
export const status = (deps: CriDeps): UnaryHandler<StatusRequest__Output, StatusResponse> => {
  // The mount probes run inside the first Status call, so that a shutdown (which lets
  // in-flight calls finish) never cuts one short and leaves its mounts behind.
  let handlers: Promise<RuntimeHandler[]> | undefined;
  const features = { supplemental_groups_policy: supplementalGroupsPolicy(), user_namespaces_host_network: false };
  const appArmor = appArmorFacility();
  const seLinux = seLinuxFacility();
  return async (req) => {
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
      info.metrics = JSON.stringify(deps.metricsEndpoint());
      info.hostFeatures = JSON.stringify({ apparmor: appArmor, selinux: seLinux, criu: await criuFacility() });
      info.tracing = JSON.stringify(deps.tracing?.info() ?? TRACING_OFF);
      info.counts = JSON.stringify(deps.liveCounts());
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
      runtime_handlers: await (handlers ??= mountFeatures(join(deps.config.state, 'probe')).then((probes) => runtimeHandlerList(deps.config, probes))),
      features,
      info,
    };
  };
};
