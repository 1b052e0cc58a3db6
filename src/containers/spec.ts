/**
 * CRI ContainerConfig → OCI runtime spec, as a pure function.
 *
 * `generateSpec` takes everything it needs as data (the CRI request, the image config,
 * the image's /etc/passwd and /etc/group text, the sandbox's paths, the host's probes,
 * devices resolved by devices.ts and Localhost seccomp profiles) and returns the spec
 * plus warnings for the caller to log. It does no I/O and needs no root, so all of it is
 * unit-tested.
 *
 * Input conventions: the CRI part keeps the CRI proto's snake_case field names (what the
 * proto loader gives with keepCase) but 64-bit integers are numbers (the CRI layer
 * converts the loader's strings), and optional wrappers are either absent or present.
 * Everything berth adds is camelCase.
 *
 * Bad input throws BerthError('InvalidArgument') with a message naming the CRI field.
 */
import { posix } from 'node:path';
import { invalidArgument } from '../common/errors.js';
import type { ImageConfig } from '../images/manifest.js';
import { cgroupsPath as ociCgroupsPath } from '../oci/runtime.js';
import {
  DEFAULT_MASKED_PATHS,
  DEFAULT_READONLY_PATHS,
  OCI_VERSION,
  type OciCpu,
  type OciDeviceCgroup,
  type OciHugepageLimit,
  type OciMemory,
  type OciNamespace,
  type OciResources,
  type OciSpec,
} from '../oci/spec.js';
import { appArmorProfile, type AppArmorRequest } from './apparmor.js';
import { capabilitySets } from './capabilities.js';
import { DEFAULT_DEVICE_RULES, deviceSpec, type CriDevice, type ResolvedDevice } from './devices.js';
import { criMount, mergeMounts, podMounts, rootfsPropagation, standardMounts, type CriMount } from './mounts.js';
import { selectSeccomp, type SeccompRequest } from './seccomp.js';
import { SELINUX_IGNORED, selinuxLabels, selinuxRequested, type SelinuxOptions } from './selinux.js';
import { criSignalName, effectiveStopSignal } from './signals.js';
import { resolveUser } from './user.js';

export { stopSignal } from './signals.js';
export type { OciSpec } from '../oci/spec.js';
export type { ResolvedDevice } from './devices.js';
export { DEFAULT_DEVICE_RULES };

export type NamespaceMode = 'POD' | 'CONTAINER' | 'NODE' | 'TARGET';

export interface CriLinuxResources {
  cpu_period: number;
  cpu_quota: number;
  cpu_shares: number;
  memory_limit_in_bytes: number;
  oom_score_adj: number;
  cpuset_cpus: string;
  cpuset_mems: string;
  hugepage_limits: Array<{ page_size: string; limit: number }>;
  unified: Record<string, string>;
  memory_swap_limit_in_bytes: number;
}

export interface CriSecurityContext {
  capabilities?: { add_capabilities: string[]; drop_capabilities: string[]; add_ambient_capabilities?: string[] };
  privileged: boolean;
  namespace_options?: { network: NamespaceMode; pid: NamespaceMode; ipc: NamespaceMode; target_id: string };
  run_as_user?: { value: number };
  run_as_group?: { value: number };
  run_as_username: string;
  readonly_rootfs: boolean;
  supplemental_groups: number[];
  no_new_privs: boolean;
  masked_paths: string[];
  readonly_paths: string[];
  seccomp?: SeccompRequest;
  apparmor?: AppArmorRequest;
  selinux_options?: SelinuxOptions;
  /** Strict: the image's /etc/group adds no groups. Merge (the default) as before. */
  supplemental_groups_policy?: 'Merge' | 'Strict';
}

export interface CriContainerConfig {
  command: string[];
  args: string[];
  working_dir: string;
  envs: Array<{ key: string; value: string }>;
  mounts: CriMount[];
  devices: CriDevice[];
  /** Fully qualified CDI device names (`vendor.com/class=name`), resolved by cdi.ts before spec generation. */
  CDI_devices?: Array<{ name: string }>;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  tty: boolean;
  stdin: boolean;
  stdin_once: boolean;
  linux?: { resources?: CriLinuxResources; security_context?: CriSecurityContext };
  /** The CRI Signal enum name; absent or SIGNAL_RUNTIME_DEFAULT: the image's. */
  stop_signal?: string;
}

export interface SandboxInfo {
  hostname: string;
  netnsPath?: string;
  ipcnsPath?: string;
  utsnsPath?: string;
  /** The infra process's PID namespace, when the pod shares one. */
  pidnsPath?: string;
  hostsPath: string;
  resolvConfPath: string;
  hostnamePath: string;
  shmPath?: string;
  cgroupParent: string;
  hostNetwork: boolean;
  hostIpc: boolean;
  hostPid: boolean;
  /** Pod-level sysctls to repeat in the container spec (optional). */
  sysctls?: Record<string, string>;
}

export interface ContainerSpecInput {
  containerId: string;
  sandboxId: string;
  config: CriContainerConfig;
  image: ImageConfig;
  /** The image's /etc/passwd and /etc/group text, read by the caller from the rootfs (may be ''). */
  passwd: string;
  group: string;
  /** The rootfs path (runc's root.path). */
  rootfs: string;
  sandbox: SandboxInfo;
  cgroupDriver: 'cgroupfs' | 'systemd';
  /** berthd's own oom_score_adj: lower requests are clamped (no CAP_SYS_RESOURCE; containerd's restrict_oom_score_adj). */
  minOomScoreAdj: number;
  /** The capabilities berthd holds (its bounding set); the container gets no others. */
  hostCapabilities?: readonly string[];
  /** Parsed Localhost seccomp profiles by localhost_ref, read by the caller. */
  localhostSeccomp?: Record<string, unknown>;
  /** The CRI devices, resolved by the caller (devices.ts resolveDevices). */
  devices?: ResolvedDevice[];
  /** The host's device nodes, given to privileged containers (devices.ts hostDevices). */
  hostDevices?: ResolvedDevice[];
  /** The PID namespace of the target container, for namespace_options.pid = TARGET. */
  targetPidnsPath?: string;
  /** Whether the memory controller accounts swap (cgroup v1 memory.memsw, v2 memory.swap.max). Default true. */
  swapAccounting?: boolean;
  /** AppArmor is enabled on the host; when false, an explicit profile other than Unconfined is refused. */
  appArmorEnabled?: boolean;
  /** The loaded profile used for AppArmor RuntimeDefault (berth's default when absent). */
  appArmorDefaultProfile?: string;
  /** SELinux is enabled on the host; when false, selinux_options are ignored (a host warning). */
  selinuxEnabled?: boolean;
}

export interface SpecResult {
  spec: OciSpec;
  /** Things the caller should log, e.g. "oom_score_adj -998 clamped to -500". */
  warnings: string[];
  /** Facts about the host the request met (e.g. no SELinux): the caller logs each once, not per container. */
  hostWarnings: string[];
}

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export { DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS };

export const ANNOTATION_CONTAINER_TYPE = 'io.kubernetes.cri.container-type';
export const ANNOTATION_SANDBOX_ID = 'io.kubernetes.cri.sandbox-id';
/** The stop signal StopContainer sends first, as a CRI Signal enum name (ContainerStatus.stop_signal). */
export const ANNOTATION_STOP_SIGNAL = 'io.berth.stop-signal';

/** Builds the OCI runtime spec of a CRI container. Pure; throws InvalidArgument on bad input. */
export function generateSpec(input: ContainerSpecInput): SpecResult {
  const warnings: string[] = [];
  const { config, image, sandbox } = input;
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(input.containerId)) {
    throw invalidArgument(`container id "${input.containerId}" is not a valid id`);
  }
  const sc: CriSecurityContext = config.linux?.security_context ?? emptySecurityContext();
  const privileged = sc.privileged;

  const user = resolveUser(
    {
      ...(sc.run_as_user ? { runAsUser: sc.run_as_user.value } : {}),
      ...(sc.run_as_username ? { runAsUsername: sc.run_as_username } : {}),
      ...(sc.run_as_group ? { runAsGroup: sc.run_as_group.value } : {}),
      supplementalGroups: sc.supplemental_groups ?? [],
      imageUser: image.run.user,
      strictGroups: sc.supplemental_groups_policy === 'Strict',
    },
    input.passwd,
    input.group,
  );

  const { caps, warnings: capWarnings } = capabilitySets({
    privileged,
    add: sc.capabilities?.add_capabilities ?? [],
    drop: sc.capabilities?.drop_capabilities ?? [],
    ...(sc.capabilities?.add_ambient_capabilities ? { addAmbient: sc.capabilities.add_ambient_capabilities } : {}),
    ...(input.hostCapabilities ? { host: input.hostCapabilities } : {}),
  });
  warnings.push(...capWarnings);

  const ns = namespaces(input, sc);
  const hostUts = !ns.some((n) => n.type === 'uts');
  const readonlyRootfs = sc.readonly_rootfs;

  const criMounts = config.mounts.map(criMount);
  const seen = new Set<string>();
  for (const [i, m] of criMounts.entries()) {
    if (seen.has(m.destination)) throw invalidArgument(`mounts[${i}].container_path "${m.destination}" is mounted twice`);
    seen.add(m.destination);
  }
  const mounts = mergeMounts(
    [
      ...standardMounts(privileged),
      ...podMounts(
        {
          hostsPath: sandbox.hostsPath,
          resolvConfPath: sandbox.resolvConfPath,
          hostnamePath: sandbox.hostnamePath,
          ...(sandbox.shmPath ? { shmPath: sandbox.shmPath } : {}),
          hostIpc: ipcMode(input, sc) === 'NODE',
        },
        readonlyRootfs,
      ),
    ],
    criMounts,
  );
  const propagation = rootfsPropagation(config.mounts);

  const { devices, rules } = deviceSpec(input.devices ?? [], input.hostDevices, privileged);
  const seccomp = selectSeccomp({
    ...(sc.seccomp ? { request: sc.seccomp } : {}),
    privileged,
    capabilities: caps.bounding,
    arch: image.architecture,
    ...(input.localhostSeccomp ? { localhostProfiles: input.localhostSeccomp } : {}),
  });
  const { resources, oomScoreAdj } = resourceSpec(input, rules, warnings);
  const apparmorProfile = appArmorProfile(sc.apparmor, {
    enabled: input.appArmorEnabled ?? false,
    privileged,
    defaultProfile: input.appArmorDefaultProfile,
  });
  const hostWarnings: string[] = [];
  let labels: { processLabel: string; mountLabel: string } | undefined;
  if (input.selinuxEnabled) labels = selinuxLabels(selinuxRequested(sc.selinux_options) ? sc.selinux_options : undefined, input.sandboxId);
  else if (selinuxRequested(sc.selinux_options)) hostWarnings.push(SELINUX_IGNORED);
  const stop = effectiveStopSignal(config, image);
  if (stop.warning) warnings.push(stop.warning);

  const spec: OciSpec = {
    ociVersion: OCI_VERSION,
    process: {
      terminal: config.tty,
      user: { uid: user.uid, gid: user.gid, additionalGids: user.additionalGids },
      args: processArgs(config, image),
      env: environment(config, image, sandbox.hostname),
      cwd: workingDir(config, image),
      capabilities: caps,
      noNewPrivileges: sc.no_new_privs,
      ...(oomScoreAdj !== undefined ? { oomScoreAdj } : {}),
      ...(apparmorProfile !== undefined ? { apparmorProfile } : {}),
      ...(labels ? { selinuxLabel: labels.processLabel } : {}),
    },
    root: { path: input.rootfs, readonly: readonlyRootfs },
    // runc refuses a hostname without a private UTS namespace.
    ...(hostUts ? {} : { hostname: sandbox.hostname }),
    mounts,
    linux: {
      namespaces: ns,
      devices,
      resources,
      cgroupsPath: cgroupsPath(input),
      ...(propagation ? { rootfsPropagation: propagation } : {}),
      maskedPaths: privileged ? [] : nonEmptyOr(sc.masked_paths, DEFAULT_MASKED_PATHS),
      readonlyPaths: privileged ? [] : nonEmptyOr(sc.readonly_paths, DEFAULT_READONLY_PATHS),
      ...(seccomp ? { seccomp } : {}),
      ...(sandbox.sysctls && Object.keys(sandbox.sysctls).length > 0 ? { sysctl: { ...sandbox.sysctls } } : {}),
      ...(labels ? { mountLabel: labels.mountLabel } : {}),
    },
    annotations: {
      ...config.annotations,
      [ANNOTATION_CONTAINER_TYPE]: 'container',
      [ANNOTATION_SANDBOX_ID]: input.sandboxId,
      [ANNOTATION_STOP_SIGNAL]: criSignalName(stop.signal),
    },
  };
  return { spec, warnings, hostWarnings };
}

function emptySecurityContext(): CriSecurityContext {
  return {
    privileged: false,
    run_as_username: '',
    readonly_rootfs: false,
    supplemental_groups: [],
    no_new_privs: false,
    masked_paths: [],
    readonly_paths: [],
  };
}

function nonEmptyOr(list: string[] | undefined, dflt: readonly string[]): string[] {
  return list && list.length > 0 ? [...list] : [...dflt];
}

/**
 * kubelet semantics: command replaces ENTRYPOINT and drops CMD; args replace CMD.
 */
export function processArgs(config: Pick<CriContainerConfig, 'command' | 'args'>, image: ImageConfig): string[] {
  const command = config.command ?? [];
  const args = config.args ?? [];
  const head = command.length > 0 ? command : image.run.entrypoint;
  const tail = args.length > 0 ? args : command.length > 0 ? [] : image.run.cmd;
  const out = [...head, ...tail];
  if (out.length === 0) throw invalidArgument("no command specified (neither the container's command/args nor the image's entrypoint/cmd)");
  return out;
}

/**
 * HOSTNAME first (as containerd, so the image or the CRI may override it), then the
 * image's env, then the CRI envs replacing by key; PATH defaults when nobody sets it.
 * HOME is left to runc, which sets it from the container's /etc/passwd when unset.
 */
export function environment(config: Pick<CriContainerConfig, 'envs'>, image: ImageConfig, hostname: string): string[] {
  const env = new Map<string, string>();
  const set = (kv: string): void => {
    const eq = kv.indexOf('=');
    env.set(eq < 0 ? kv : kv.slice(0, eq), kv);
  };
  set(`HOSTNAME=${hostname}`);
  for (const kv of image.run.env) if (kv !== '') set(kv);
  config.envs.forEach((e, i) => {
    if (!e.key || e.key.includes('=')) throw invalidArgument(`envs[${i}].key "${e.key}" is not a valid variable name`);
    set(`${e.key}=${e.value}`);
  });
  if (!env.has('PATH')) env.set('PATH', `PATH=${DEFAULT_PATH}`);
  return [...env.values()];
}

export function workingDir(config: Pick<CriContainerConfig, 'working_dir'>, image: ImageConfig): string {
  const wd = config.working_dir || image.run.workingDir || '/';
  if (!posix.isAbsolute(wd)) {
    throw invalidArgument(config.working_dir ? `working_dir "${wd}" must be an absolute path` : `image working dir "${wd}" must be an absolute path`);
  }
  return wd;
}

function ipcMode(input: ContainerSpecInput, sc: CriSecurityContext): NamespaceMode {
  return sc.namespace_options?.ipc ?? (input.sandbox.hostIpc ? 'NODE' : 'POD');
}

/**
 * The container's namespaces. With namespace_options absent (not what the kubelet
 * sends) the sandbox's host flags decide. A POD namespace without a path (a sandbox
 * that pinned none) becomes a new one; UTS follows the network, as in the kubelet.
 */
export function namespaces(input: ContainerSpecInput, sc: CriSecurityContext): OciNamespace[] {
  const { sandbox } = input;
  const opts = sc.namespace_options;
  const network = opts?.network ?? (sandbox.hostNetwork ? 'NODE' : 'POD');
  // Without namespace_options the container follows its pod, as under containerd (kubelet always sends them).
  const pid = opts?.pid ?? (sandbox.hostPid ? 'NODE' : sandbox.pidnsPath ? 'POD' : 'CONTAINER');
  const ipc = ipcMode(input, sc);
  const out: OciNamespace[] = [];
  const join = (type: OciNamespace['type'], path?: string): void => {
    out.push(path ? { type, path } : { type });
  };

  switch (pid) {
    case 'NODE':
      break;
    case 'CONTAINER':
      join('pid');
      break;
    case 'POD':
      if (!sandbox.pidnsPath) throw invalidArgument('namespace_options.pid is POD but the sandbox has no shared PID namespace');
      join('pid', sandbox.pidnsPath);
      break;
    case 'TARGET':
      if (!opts?.target_id) throw invalidArgument('namespace_options.pid is TARGET but namespace_options.target_id is empty');
      if (!input.targetPidnsPath) throw invalidArgument(`namespace_options.target_id "${opts.target_id}": target PID namespace not resolved`);
      join('pid', input.targetPidnsPath);
      break;
    default:
      throw invalidArgument(`namespace_options.pid "${String(pid)}" is not supported`);
  }
  if (network === 'NODE') {
    // host network: host UTS too
  } else if (network === 'POD') {
    join('network', sandbox.netnsPath);
    join('uts', sandbox.utsnsPath);
  } else {
    throw invalidArgument(`namespace_options.network "${String(network)}" is not supported (POD or NODE)`);
  }
  if (ipc === 'POD') join('ipc', sandbox.ipcnsPath);
  else if (ipc === 'CONTAINER') join('ipc');
  else if (ipc !== 'NODE') throw invalidArgument(`namespace_options.ipc "${String(ipc)}" is not supported`);
  join('mount');
  join('cgroup');
  return out;
}

const HUGEPAGE_SIZE = /^\d+(?:KB|MB|GB|TB|PB)$/;

function resourceSpec(input: ContainerSpecInput, devices: OciDeviceCgroup[], warnings: string[]): { resources: OciResources; oomScoreAdj?: number } {
  const r = input.config.linux?.resources;
  const resources: OciResources = { devices };
  if (!r) return { resources };
  const nonNegative = (v: number | undefined, field: string): number => {
    const n = v ?? 0;
    if (!Number.isSafeInteger(n) || n < 0) throw invalidArgument(`resources.${field} ${n} must be a non-negative integer`);
    return n;
  };

  const cpu: OciCpu = {};
  const shares = nonNegative(r.cpu_shares, 'cpu_shares');
  const quota = r.cpu_quota ?? 0;
  if (!Number.isSafeInteger(quota) || quota < -1) throw invalidArgument(`resources.cpu_quota ${quota} must be -1 or more`);
  const period = nonNegative(r.cpu_period, 'cpu_period');
  if (shares > 0) cpu.shares = shares;
  if (quota !== 0) cpu.quota = quota;
  if (period > 0) cpu.period = period;
  if (r.cpuset_cpus) cpu.cpus = r.cpuset_cpus;
  if (r.cpuset_mems) cpu.mems = r.cpuset_mems;
  if (Object.keys(cpu).length > 0) resources.cpu = cpu;

  const memory: OciMemory = {};
  const limit = nonNegative(r.memory_limit_in_bytes, 'memory_limit_in_bytes');
  const swap = r.memory_swap_limit_in_bytes ?? 0;
  if (!Number.isSafeInteger(swap) || swap < -1) throw invalidArgument(`resources.memory_swap_limit_in_bytes ${swap} must be -1 or more`);
  const swapAccounting = input.swapAccounting ?? true;
  if (limit > 0) {
    memory.limit = limit;
    // As containerd: memory+swap equal to memory, i.e. no swap, unless asked otherwise.
    if (swap === 0 && swapAccounting) memory.swap = limit;
  }
  if (swap !== 0) {
    if (!swapAccounting) warnings.push(`memory_swap_limit_in_bytes ${swap} ignored: swap accounting is not enabled`);
    else if (swap > 0 && limit > 0 && swap < limit) {
      throw invalidArgument(`resources.memory_swap_limit_in_bytes ${swap} is below memory_limit_in_bytes ${limit}`);
    } else memory.swap = swap;
  }
  if (Object.keys(memory).length > 0) resources.memory = memory;

  const hugepages: OciHugepageLimit[] = (r.hugepage_limits ?? []).map((h, i) => {
    if (!HUGEPAGE_SIZE.test(h.page_size)) throw invalidArgument(`resources.hugepage_limits[${i}].page_size "${h.page_size}" is not like "2MB"`);
    return { pageSize: h.page_size, limit: nonNegative(h.limit, `hugepage_limits[${i}].limit`) };
  });
  if (hugepages.length > 0) resources.hugepageLimits = hugepages;
  if (r.unified && Object.keys(r.unified).length > 0) resources.unified = { ...r.unified };

  let oomScoreAdj: number | undefined;
  if (r.oom_score_adj !== undefined) {
    const want = r.oom_score_adj;
    if (!Number.isInteger(want) || want < -1000 || want > 1000) throw invalidArgument(`resources.oom_score_adj ${want} is outside -1000..1000`);
    oomScoreAdj = Math.max(want, input.minOomScoreAdj);
    if (oomScoreAdj !== want) warnings.push(`oom_score_adj ${want} clamped to ${oomScoreAdj}`);
  }
  return { resources, ...(oomScoreAdj !== undefined ? { oomScoreAdj } : {}) };
}

/** runc's cgroupsPath for the container, under its pod's cgroup parent. */
export function cgroupsPath(input: Pick<ContainerSpecInput, 'cgroupDriver' | 'containerId' | 'sandbox'>): string {
  return ociCgroupsPath(input.cgroupDriver, input.sandbox.cgroupParent, input.containerId);
}
