import { BerthError } from '../../common/errors.js';
import { toPortMappings, type NamespaceMode, type SandboxService } from '../../sandbox/sandbox-service.js';
import type { RunPodSandboxRequest__Output } from '../gen/runtime/v1/RunPodSandboxRequest.js';
import type { RunPodSandboxResponse } from '../gen/runtime/v1/RunPodSandboxResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { boundedString, required, requiredString } from '../validate.js';
import { podUsernsFrom } from '../../sandbox/userns.js';
import { toSpecResources } from '../container/convert.js';

const MAX_PORT = 65535;

/**
 * RunPodSandbox. The creation is not tied to the caller's deadline (see
 * SandboxService): if kubelet gives up, its retry with the same metadata gets the pod.
 */
export const runPodSandbox =
  (svc: SandboxService, defaultRuntime: string): UnaryHandler<RunPodSandboxRequest__Output, RunPodSandboxResponse> =>
  async (req, ctx) => {
    const cfg = required(req.config, 'config');
    const md = required(cfg.metadata, 'config.metadata');
    const metadata = {
      name: requiredString(md.name, 'config.metadata.name', 253),
      namespace: requiredString(md.namespace, 'config.metadata.namespace', 253),
      uid: requiredString(md.uid, 'config.metadata.uid', 128),
      attempt: md.attempt,
    };
    const ns = cfg.linux?.security_context?.namespace_options;
    const mode = (m: string | undefined, field: string): NamespaceMode => {
      if (m === 'TARGET') throw new BerthError('InvalidArgument', `${field}: TARGET is only valid for containers`);
      return (m ?? 'POD') as NamespaceMode;
    };
    for (const [i, p] of cfg.port_mappings.entries()) {
      for (const [k, v] of [
        ['container_port', p.container_port],
        ['host_port', p.host_port],
      ] as const) {
        if (v < 0 || v > MAX_PORT) throw new BerthError('InvalidArgument', `config.port_mappings[${i}].${k} ${v} is not a port number`);
      }
    }
    if (cfg.port_mappings.length > 1024)
      throw new BerthError('InvalidArgument', `config.port_mappings has ${cfg.port_mappings.length} entries; the limit is 1024`);
    const namespaces = {
      network: mode(ns?.network, 'config.linux.security_context.namespace_options.network'),
      pid: mode(ns?.pid, 'config.linux.security_context.namespace_options.pid'),
      ipc: mode(ns?.ipc, 'config.linux.security_context.namespace_options.ipc'),
    };
    const userns = podUsernsFrom(ns?.userns_options ?? undefined, namespaces, 'config.linux.security_context.namespace_options.userns_options');
    const dns = cfg.dns_config ? { servers: cfg.dns_config.servers, searches: cfg.dns_config.searches, options: cfg.dns_config.options } : undefined;
    const id = await svc.run({
      metadata,
      hostname: boundedString(cfg.hostname, 'config.hostname', 253),
      dns,
      portMappings: toPortMappings(cfg.port_mappings),
      cgroupParent: boundedString(cfg.linux?.cgroup_parent ?? '', 'config.linux.cgroup_parent', 1024),
      sysctls: cfg.linux?.sysctls ?? {},
      namespaces,
      runtimeHandler: req.runtime_handler === '' ? defaultRuntime : boundedString(req.runtime_handler, 'runtime_handler', 63),
      ...(userns ? { userns } : {}),
      logDirectory: absoluteOrEmpty(boundedString(cfg.log_directory, 'config.log_directory'), 'config.log_directory'),
      labels: cfg.labels,
      annotations: cfg.annotations,
      ...(cfg.linux?.overhead ? { overhead: toSpecResources(cfg.linux.overhead) } : {}),
      ...(cfg.linux?.resources ? { resources: toSpecResources(cfg.linux.resources) } : {}),
      raw: cfg as unknown as Record<string, unknown>,
    });
    // Only an answer the caller can still receive counts as delivered.
    if (!ctx.signal.aborted) svc.acknowledge(id);
    return { pod_sandbox_id: id };
  };

/** A host path kubelet names: absolute, or empty for none. */
function absoluteOrEmpty(path: string, field: string): string {
  if (path !== '' && !path.startsWith('/')) throw new BerthError('InvalidArgument', `${field} "${path}" is not an absolute path`);
  return path;
}
