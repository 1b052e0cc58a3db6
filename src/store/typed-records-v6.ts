/**
 * Migration 6: the typed facts of pods and containers (version 1 of each document),
 * derived from the CRI requests the rows stored until then. The derivation is frozen here,
 * apart from the code that decides the facts today, so that the migration keeps meaning
 * what it meant when it shipped (append only, as every migration).
 *
 * What a request alone cannot say is left for the owner to fill in: a container's user
 * and stop signal were decided from its image when its OCI spec was made; they are null
 * here, and container recovery reads them from the container's bundle.
 */
import { hostname as osHostname } from 'node:os';

type Json = Record<string, unknown>;

const obj = (v: unknown): Json => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : {});
const str = (v: unknown): string => (typeof v === 'string' ? v : '');
const num = (v: unknown): number => (v === null || v === undefined || v === '' ? 0 : Number(v));
const strMap = (v: unknown): Record<string, string> => Object.fromEntries(Object.entries(obj(v)).map(([k, x]) => [k, String(x)]));
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const mode = (v: unknown): string => (typeof v === 'string' && v !== '' ? v : 'POD');

/** LinuxContainerResources as decoded (int64 as strings) → numbers; null when absent. */
export function resourcesV1(v: unknown): Json | null {
  if (typeof v !== 'object' || v === null) return null;
  const r = v as Json;
  return {
    cpu_period: num(r.cpu_period),
    cpu_quota: num(r.cpu_quota),
    cpu_shares: num(r.cpu_shares),
    memory_limit_in_bytes: num(r.memory_limit_in_bytes),
    oom_score_adj: num(r.oom_score_adj),
    cpuset_cpus: str(r.cpuset_cpus),
    cpuset_mems: str(r.cpuset_mems),
    hugepage_limits: list(r.hugepage_limits).map((h) => ({ page_size: str(obj(h).page_size), limit: num(obj(h).limit) })),
    unified: strMap(r.unified),
    memory_swap_limit_in_bytes: num(r.memory_swap_limit_in_bytes),
  };
}

/** The hostname berthd gave a pod that named none (RFC 1123, at most 63 characters). */
function defaultHostname(podName: string): string {
  const h = podName
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
    .replace(/-+$/, '');
  return h === '' ? 'pod' : h;
}

const idMaps = (v: unknown): Json[] => list(v).map((m) => ({ containerId: num(obj(m).container_id), hostId: num(obj(m).host_id), size: num(obj(m).length) }));

/** A pod's facts (version 1) from its stored PodSandboxConfig and its name. */
export function podFactsV1(config: Json, podName: string): Json {
  const linux = obj(config.linux);
  const ns = obj(obj(linux.security_context).namespace_options);
  const namespaces = { network: mode(ns.network), pid: mode(ns.pid), ipc: mode(ns.ipc) };
  const userns = obj(ns.userns_options);
  const dns = obj(config.dns_config);
  const [servers, searches, options] = [list(dns.servers), list(dns.searches), list(dns.options)].map((l) => l.map(String));
  const hasDns = servers!.length + searches!.length + options!.length > 0;
  const hostname = str(config.hostname) !== '' ? str(config.hostname) : namespaces.network === 'NODE' ? osHostname() : defaultHostname(podName);
  return {
    v: 1,
    hostname,
    logDirectory: str(config.log_directory),
    namespaces,
    userns: userns.mode === 'POD' ? { uids: idMaps(userns.uids), gids: idMaps(userns.gids) } : null,
    cgroupParent: str(linux.cgroup_parent),
    labels: strMap(config.labels),
    annotations: strMap(config.annotations),
    portMappings: list(config.port_mappings)
      .map(obj)
      .filter((p) => num(p.host_port) > 0)
      .map((p) => ({
        hostPort: num(p.host_port),
        containerPort: num(p.container_port),
        protocol: (str(p.protocol) || 'TCP').toLowerCase(),
        ...(str(p.host_ip) ? { hostIP: str(p.host_ip) } : {}),
      })),
    dns: hasDns ? { servers, searches, options } : null,
    sysctls: strMap(linux.sysctls),
    overhead: resourcesV1(linux.overhead),
    resources: resourcesV1(linux.resources),
  };
}

const idMappings = (v: unknown): Json[] =>
  list(v).map((m) => ({ host_id: num(obj(m).host_id), container_id: num(obj(m).container_id), length: num(obj(m).length) }));

/** A container's facts (version 1) from its stored ContainerConfig (user and stop signal: null, see above). */
export function containerFactsV1(config: Json): Json {
  const image = obj(config.image);
  const sc = obj(obj(config.linux).security_context);
  const selinux = obj(sc.selinux_options);
  return {
    v: 1,
    labels: strMap(config.labels),
    annotations: strMap(config.annotations),
    image: {
      annotations: strMap(image.annotations),
      userSpecifiedImage: str(image.user_specified_image),
      runtimeHandler: str(image.runtime_handler),
    },
    tty: config.tty === true,
    stdin: config.stdin === true,
    stdinOnce: config.stdin_once === true,
    resources: resourcesV1(obj(config.linux).resources ?? null),
    mounts: list(config.mounts)
      .map(obj)
      .map((m) => ({
        container_path: str(m.container_path),
        host_path: str(m.host_path),
        readonly: m.readonly === true,
        selinux_relabel: m.selinux_relabel === true,
        propagation: str(m.propagation) || 'PROPAGATION_PRIVATE',
        recursive_read_only: m.recursive_read_only === true,
        uidMappings: idMappings(m.uidMappings),
        gidMappings: idMappings(m.gidMappings),
        image: typeof m.image === 'object' && m.image !== null ? { image: str(obj(m.image).image) } : null,
        image_sub_path: str(m.image_sub_path),
      })),
    privileged: sc.privileged === true,
    selinuxOptions:
      typeof sc.selinux_options === 'object' && sc.selinux_options !== null
        ? { user: str(selinux.user), role: str(selinux.role), type: str(selinux.type), level: str(selinux.level) }
        : null,
    user: null,
    stopSignal: null,
  };
}
