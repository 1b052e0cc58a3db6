import { parseProfileString } from '../../containers/apparmor.js';
import type { ContainerRecord } from '../../containers/container-repository.js';
import type { ContainerService } from '../../containers/container-service.js';
import { hostProbes } from '../../containers/host-probes.js';
import { SELINUX_IGNORED, selinuxRequested } from '../../containers/selinux.js';
import type { CriContainerConfig, CriLinuxResources } from '../../containers/spec.js';
import { criContainerState } from '../../containers/state.js';
import type { ImageRecord } from '../../images/image-repository.js';
import { isImageId, parseReference, repositoryName } from '../../images/reference.js';
import type { Container } from '../gen/runtime/v1/Container.js';
import type { ContainerConfig__Output } from '../gen/runtime/v1/ContainerConfig.js';
import type { ContainerFilter__Output } from '../gen/runtime/v1/ContainerFilter.js';
import type { ImageSpec } from '../gen/runtime/v1/ImageSpec.js';
import type { LinuxContainerResources__Output } from '../gen/runtime/v1/LinuxContainerResources.js';
import { boundedString, requiredString } from '../validate.js';
import type { SecurityProfile__Output } from '../gen/runtime/v1/SecurityProfile.js';
import { refuseUnsupportedContainerFields } from '../refusals.js';

const num = (v: string | number | null | undefined): number => (v === null || v === undefined || v === '' ? 0 : Number(v));

/** A container or pod id field: required, at most 128 characters (full ids have 64). */
export const requireId = (v: string, field: string): string => requiredString(v, field, 128);

/** Decoded LinuxContainerResources (int64 as strings) → numbers. */
export function toSpecResources(r: LinuxContainerResources__Output): CriLinuxResources {
  return {
    cpu_period: num(r.cpu_period),
    cpu_quota: num(r.cpu_quota),
    cpu_shares: num(r.cpu_shares),
    memory_limit_in_bytes: num(r.memory_limit_in_bytes),
    oom_score_adj: num(r.oom_score_adj),
    cpuset_cpus: r.cpuset_cpus,
    cpuset_mems: r.cpuset_mems,
    hugepage_limits: r.hugepage_limits.map((h) => ({ page_size: h.page_size, limit: num(h.limit) })),
    unified: r.unified,
    memory_swap_limit_in_bytes: num(r.memory_swap_limit_in_bytes),
  };
}

/**
 * A SecurityProfile, or else the deprecated string field that predates it
 * ("runtime/default", "docker/default", "unconfined", "localhost/<ref>").
 */
function securityProfile(
  profile: SecurityProfile__Output | null | undefined,
  deprecated: string,
  field: string,
): { profile_type: 'RuntimeDefault' | 'Unconfined' | 'Localhost'; localhost_ref: string } | undefined {
  if (profile) return { profile_type: profile.profile_type as 'RuntimeDefault' | 'Unconfined' | 'Localhost', localhost_ref: profile.localhost_ref };
  return parseProfileString(deprecated === 'docker/default' ? 'runtime/default' : deprecated, field);
}

/**
 * The decoded ContainerConfig (int64 as strings) → the spec generator's input (numbers).
 * Fields berth does not apply yet are refused here (see ../contract.ts).
 */
/** The longest path Linux resolves (PATH_MAX, NUL included). */
const PATH_MAX = 4095;

export function toSpecConfig(c: ContainerConfig__Output): CriContainerConfig {
  refuseUnsupportedContainerFields(c);
  const r = c.linux?.resources;
  const sc = c.linux?.security_context;
  const seccomp = sc ? securityProfile(sc.seccomp, sc.seccomp_profile_path, 'linux.security_context.seccomp_profile_path') : undefined;
  const apparmor = sc ? securityProfile(sc.apparmor, sc.apparmor_profile, 'linux.security_context.apparmor_profile') : undefined;
  return {
    stop_signal: c.stop_signal,
    command: c.command,
    args: c.args,
    // A path longer than PATH_MAX is never usable; runc 1.1 hangs in create on a cwd of megabytes.
    working_dir: boundedString(c.working_dir, 'config.working_dir', PATH_MAX),
    envs: c.envs.map((e) => ({ key: e.key, value: Buffer.isBuffer(e.value) ? e.value.toString('utf8') : String(e.value) })),
    mounts: c.mounts.map((m, i) => ({
      container_path: boundedString(m.container_path, `config.mounts[${i}].container_path`, PATH_MAX),
      host_path: boundedString(m.host_path, `config.mounts[${i}].host_path`, PATH_MAX),
      readonly: m.readonly,
      selinux_relabel: m.selinux_relabel,
      propagation: m.propagation,
      recursive_read_only: m.recursive_read_only,
      uidMappings: m.uidMappings,
      gidMappings: m.gidMappings,
      image: m.image ? { image: m.image.image } : null,
      image_sub_path: m.image_sub_path,
    })),
    devices: c.devices.map((d) => ({ container_path: d.container_path, host_path: d.host_path, permissions: d.permissions })),
    CDI_devices: c.CDI_devices.map((d) => ({ name: d.name })),
    labels: c.labels,
    annotations: c.annotations,
    tty: c.tty,
    stdin: c.stdin,
    stdin_once: c.stdin_once,
    linux: {
      ...(r ? { resources: toSpecResources(r) } : {}),
      ...(sc
        ? {
            security_context: {
              ...(sc.capabilities
                ? {
                    capabilities: {
                      add_capabilities: sc.capabilities.add_capabilities,
                      drop_capabilities: sc.capabilities.drop_capabilities,
                      add_ambient_capabilities: sc.capabilities.add_ambient_capabilities,
                    },
                  }
                : {}),
              privileged: sc.privileged,
              ...(sc.namespace_options
                ? {
                    namespace_options: {
                      network: sc.namespace_options.network,
                      pid: sc.namespace_options.pid,
                      ipc: sc.namespace_options.ipc,
                      target_id: sc.namespace_options.target_id,
                    },
                  }
                : {}),
              ...(sc.run_as_user ? { run_as_user: { value: num(sc.run_as_user.value) } } : {}),
              ...(sc.run_as_group ? { run_as_group: { value: num(sc.run_as_group.value) } } : {}),
              run_as_username: sc.run_as_username,
              readonly_rootfs: sc.readonly_rootfs,
              supplemental_groups: sc.supplemental_groups.map(num),
              no_new_privs: sc.no_new_privs,
              masked_paths: sc.masked_paths,
              readonly_paths: sc.readonly_paths,
              ...(seccomp ? { seccomp } : {}),
              ...(apparmor ? { apparmor } : {}),
              ...(sc.selinux_options ? { selinux_options: { ...sc.selinux_options } } : {}),
              supplemental_groups_policy: sc.supplemental_groups_policy,
            },
          }
        : {}),
    },
  } as CriContainerConfig;
}

/** What of an image a container's status needs: its repo digests and tags. */
export type ContainerImageNames = Pick<ImageRecord, 'digests' | 'tags'>;

/** The reference the user wrote: kubelet's `user_specified_image`, else what CreateContainer named the image by. */
function userReference(c: ContainerRecord): string {
  return c.facts.image.userSpecifiedImage || c.imageRef;
}

function repositoryOf(name: string): string | undefined {
  if (isImageId(name)) return undefined;
  try {
    return repositoryName(parseReference(name));
  } catch {
    return undefined;
  }
}

/**
 * ContainerStatus.image_ref (kubelet's `imageID`): the repo digest
 * `registry/repo@sha256:<manifest digest>`, as containerd and CRI-O report it. Of several,
 * the one of the repository the container's image was named by; the image ID only when
 * the image has no repo digest (or is gone).
 */
export function containerImageRef(c: ContainerRecord, image: ContainerImageNames | undefined): string {
  const digests = image?.digests ?? [];
  const repo = repositoryOf(userReference(c));
  return (repo !== undefined ? digests.find((d) => d.startsWith(`${repo}@`)) : undefined) ?? digests[0] ?? c.imageId;
}

/**
 * The container's ImageSpec: `image` as the user named it (kubelet sends the image ID
 * there and the pod spec's name in `user_specified_image`, which is kept too). Created by
 * ID without a user-specified name, the image's first tag stands for it, as in containerd.
 */
function criImageSpec(c: ContainerRecord, image: ContainerImageNames | undefined): ImageSpec {
  const img = c.facts.image;
  const user = userReference(c);
  return {
    image: isImageId(user) ? (image?.tags[0] ?? user) : user,
    annotations: img.annotations,
    user_specified_image: img.userSpecifiedImage,
    runtime_handler: img.runtimeHandler,
  };
}

/** A container as CRI's Container message; `image` is its image's record, when that still exists. */
export function toCriContainer(c: ContainerRecord, image?: ContainerImageNames): Container {
  return {
    id: c.id,
    pod_sandbox_id: c.sandboxId,
    metadata: { name: c.name, attempt: c.attempt },
    image: criImageSpec(c, image),
    image_ref: containerImageRef(c, image),
    image_id: c.imageId,
    state: criContainerState(c.state),
    created_at: c.createdAt,
    labels: c.facts.labels,
    annotations: c.facts.annotations,
  };
}

/**
 * The Container message of each record, with the image names it was made with: a record
 * is not changed once read and the repositories hand out the same record (and names)
 * until they change, so kubelet's relist every second makes each message once.
 */
const listed = new WeakMap<ContainerRecord, { image: ContainerImageNames | undefined; container: Container }>();

function keptCriContainer(c: ContainerRecord, image: ContainerImageNames | undefined): Container {
  const hit = listed.get(c);
  if (hit !== undefined && hit.image === image) return hit.container;
  const container = toCriContainer(c, image);
  listed.set(c, { image, container });
  return container;
}

/** ListContainers filtering: id or pod id (or unique prefixes), state, labels (all must match). */
export function filteredContainers(svc: ContainerService, f: ContainerFilter__Output | null): Container[] {
  let recs = svc.list();
  if (f?.id) {
    const one = svc.find(f.id);
    recs = one && one.state !== 'creating' ? [one] : [];
  }
  if (f?.pod_sandbox_id) recs = recs.filter((c) => c.sandboxId.startsWith(f.pod_sandbox_id));
  // One image lookup per image, not per container.
  const images = new Map<string, ContainerImageNames | undefined>();
  const imageOf = (c: ContainerRecord): ContainerImageNames | undefined => {
    if (!images.has(c.imageId)) images.set(c.imageId, svc.imageNamesOf(c));
    return images.get(c.imageId);
  };
  return recs
    .map((c) => keptCriContainer(c, imageOf(c)))
    .filter((c) => (!f?.state || c.state === f.state.state) && Object.entries(f?.label_selector ?? {}).every(([k, v]) => c.labels?.[k] === v));
}

/**
 * ContainerStatus info["info"] when verbose. Keys as containerd and CRI-O name them
 * (`sandboxID`, `pid`, `privileged`, `config`, `runtimeSpec`), so that scripts and
 * `crictl inspect -o go-template` work the same against berth; `id`, `shimPid` and
 * `state` are berth's own.
 */
export function verboseInfo(c: ContainerRecord, spec: Record<string, unknown> | undefined): Record<string, unknown> {
  return {
    ...(selinuxRequested(c.facts.selinuxOptions) && !hostProbes().selinuxEnabled ? { selinux: SELINUX_IGNORED } : {}),
    id: c.id,
    sandboxID: c.sandboxId,
    pid: c.pid ?? 0,
    shimPid: c.shimPid,
    state: c.state,
    privileged: c.facts.privileged,
    config: readableConfig(c.request),
    ...(spec ? { runtimeSpec: spec } : {}),
  };
}

/**
 * The recorded ContainerConfig for people to read: env values are bytes on the wire
 * (berth's proto) and so recorded as JSON'd Buffers; shown as text.
 */
function readableConfig(cfg: Record<string, unknown>): Record<string, unknown> {
  const envs = cfg.envs;
  if (!Array.isArray(envs)) return cfg;
  return {
    ...cfg,
    envs: envs.map((e: { key?: string; value?: unknown }) => {
      const v = e.value as { type?: string; data?: number[] } | string | undefined;
      const text = typeof v === 'object' && v !== null && v.type === 'Buffer' && Array.isArray(v.data) ? Buffer.from(v.data).toString('utf8') : v;
      return { ...e, value: text };
    }),
  };
}
