/**
 * The kubelet contract: what berth does with every field of the CRI requests that
 * describe pods and containers. Each field of PodSandboxConfig, ContainerConfig, Mount,
 * LinuxContainerSecurityContext, LinuxSandboxSecurityContext and the messages nested in
 * them has one decision here:
 *
 * - `applied`: honoured as the CRI describes it;
 * - `refused`: a request that sets it gets an error naming the field (refusals.ts);
 * - `ignored`: accepted without effect, for the reason given (never silently: the
 *   reason is the documentation, and where a user asked for something the host lacks,
 *   a warning is logged).
 *
 * test/unit/cri/contract.test.ts walks the proto's descriptors and fails on a field
 * with no decision, so a field added to the proto waits for someone to decide.
 */
export type Decision = `applied: ${string}` | `refused: ${string}` | `ignored: ${string}`;

/** The root messages whose fields (and nested messages' fields) must each have a decision. */
export const CONTRACT_ROOTS = ['PodSandboxConfig', 'ContainerConfig', 'Mount', 'LinuxContainerSecurityContext', 'LinuxSandboxSecurityContext'] as const;

const NO_PAUSE = 'berth runs no pause container for this to confine; kubelet repeats the pod-level setting in each container, where it is applied' as const;

export const CONTRACT: Readonly<Record<string, Decision>> = {
  // PodSandboxConfig
  'PodSandboxConfig.metadata': 'applied: names the pod (ListPodSandbox, PodSandboxStatus, CNI K8S_POD_* args)',
  'PodSandboxConfig.hostname': 'applied: the pod UTS namespace hostname and /etc/hostname',
  'PodSandboxConfig.log_directory': "applied: containers' log paths are relative to it",
  'PodSandboxConfig.dns_config': "applied: the pod's /etc/resolv.conf",
  'PodSandboxConfig.port_mappings': 'applied: CNI portMappings capability',
  'PodSandboxConfig.labels': 'applied: stored, returned, filtered on',
  'PodSandboxConfig.annotations': 'applied: stored and returned',
  'PodSandboxConfig.linux': 'applied: see LinuxPodSandboxConfig',
  'PodSandboxConfig.windows': 'ignored: Windows-only; berth runs Linux pods',
  'PodSandboxMetadata.name': 'applied: pod identity',
  'PodSandboxMetadata.uid': 'applied: pod identity',
  'PodSandboxMetadata.namespace': 'applied: pod identity',
  'PodSandboxMetadata.attempt': 'applied: pod identity',
  'DNSConfig.servers': 'applied: nameserver lines',
  'DNSConfig.searches': 'applied: search line',
  'DNSConfig.options': 'applied: options line',
  'PortMapping.protocol': 'applied: passed to the portmap plugin',
  'PortMapping.container_port': 'applied: passed to the portmap plugin',
  'PortMapping.host_port': 'applied: passed to the portmap plugin (0: no host port)',
  'PortMapping.host_ip': 'applied: passed to the portmap plugin',
  'LinuxPodSandboxConfig.cgroup_parent': "applied: the pod's cgroup; containers are created under it",
  'LinuxPodSandboxConfig.security_context': 'applied: see LinuxSandboxSecurityContext',
  'LinuxPodSandboxConfig.sysctls': "applied: set in the pod's namespaces and repeated in its containers",
  'LinuxPodSandboxConfig.overhead':
    'applied: recorded, shown by verbose PodSandboxStatus and replaced by UpdatePodSandboxResources; no cgroup is written: kubelet sizes the pod cgroup (cgroup_parent) itself',
  'LinuxPodSandboxConfig.resources':
    'applied: recorded, shown by verbose PodSandboxStatus and replaced by UpdatePodSandboxResources; no cgroup is written: kubelet sizes the pod cgroup (cgroup_parent) itself',

  // LinuxSandboxSecurityContext
  'LinuxSandboxSecurityContext.namespace_options': 'applied: network, pid and ipc namespaces of the pod',
  'LinuxSandboxSecurityContext.selinux_options': `ignored: ${NO_PAUSE}`,
  'LinuxSandboxSecurityContext.run_as_user': `ignored: ${NO_PAUSE}; the shared-PID infra process runs as 65535`,
  'LinuxSandboxSecurityContext.run_as_group': `ignored: ${NO_PAUSE}; the shared-PID infra process runs as 65535`,
  'LinuxSandboxSecurityContext.readonly_rootfs': `ignored: ${NO_PAUSE}; the infra rootfs is always read-only`,
  'LinuxSandboxSecurityContext.supplemental_groups': `ignored: ${NO_PAUSE}`,
  'LinuxSandboxSecurityContext.supplemental_groups_policy': `ignored: ${NO_PAUSE}`,
  'LinuxSandboxSecurityContext.privileged': 'ignored: the pod gets no device or capability of its own; privileged containers are decided per container',
  'LinuxSandboxSecurityContext.seccomp': `ignored: ${NO_PAUSE}`,
  'LinuxSandboxSecurityContext.apparmor': `ignored: ${NO_PAUSE}`,
  'LinuxSandboxSecurityContext.seccomp_profile_path': `ignored: deprecated; ${NO_PAUSE}`,

  // NamespaceOption and user namespaces
  'NamespaceOption.network': 'applied: POD or NODE',
  'NamespaceOption.pid': 'applied: POD, CONTAINER, NODE, or TARGET for containers',
  'NamespaceOption.ipc': 'applied: POD, CONTAINER or NODE',
  'NamespaceOption.target_id': 'applied: the container whose PID namespace a TARGET container joins',
  'NamespaceOption.userns_options':
    "applied: mode POD gives the pod its own pinned user namespace (hostUsers: false; sandbox/userns.ts), NODE the host's; a container joins its pod's",
  'UserNamespace.mode': 'applied: POD or NODE (INVALID_ARGUMENT otherwise)',
  'UserNamespace.uids': 'applied: the pod user namespace uid_map; overlapping, non-contiguous, < 65536 ids or no container id 0 is INVALID_ARGUMENT',
  'UserNamespace.gids': 'applied: the pod user namespace gid_map, checked as uids',
  'IDMapping.host_id': 'applied: with the user namespace or idmapped mount that carries it',
  'IDMapping.container_id': 'applied: with the user namespace or idmapped mount that carries it',
  'IDMapping.length': 'applied: with the user namespace or idmapped mount that carries it',

  // Profiles, ids, SELinux
  'SecurityProfile.profile_type': 'applied: RuntimeDefault, Unconfined, Localhost',
  'SecurityProfile.localhost_ref': 'applied: the Localhost profile (a seccomp file path, an AppArmor profile name)',
  'Int64Value.value': 'applied: the wrapped id',
  'SELinuxOption.user': 'applied: on a host with SELinux, part of the process label; without SELinux ignored with one warning',
  'SELinuxOption.role': 'applied: on a host with SELinux, part of the process label; without SELinux ignored with one warning',
  'SELinuxOption.type': 'applied: on a host with SELinux, part of the process label; without SELinux ignored with one warning',
  'SELinuxOption.level': 'applied: on a host with SELinux, the process and mount label level; without SELinux ignored with one warning',

  // ContainerConfig
  'ContainerConfig.metadata': 'applied: container identity (name, attempt)',
  'ContainerConfig.image': 'applied: the image the container runs; see ImageSpec',
  'ContainerConfig.command': "applied: replaces the image's ENTRYPOINT",
  'ContainerConfig.args': "applied: replaces the image's CMD",
  'ContainerConfig.working_dir': 'applied: process cwd',
  'ContainerConfig.envs': "applied: over the image's env",
  'ContainerConfig.mounts': 'applied: see Mount',
  'ContainerConfig.devices': 'applied: OCI linux.devices and device cgroup rules; symlinks resolved, directories walked',
  'ContainerConfig.labels': 'applied: stored, returned, filtered on',
  'ContainerConfig.annotations': 'applied: stored, returned, and passed to the OCI spec',
  'ContainerConfig.log_path': 'applied: the CRI log file, under the pod log_directory',
  'ContainerConfig.stdin': 'applied: conmon keeps stdin open for attach',
  'ContainerConfig.stdin_once': 'applied: stdin closes after the first attach ends',
  'ContainerConfig.tty': 'applied: the process gets a terminal',
  'ContainerConfig.linux': 'applied: see LinuxContainerConfig',
  'ContainerConfig.windows': 'ignored: Windows-only; berth runs Linux containers',
  'ContainerConfig.CDI_devices': 'applied: resolved through the CDI spec files of [cdi] spec_dirs (containers/cdi.ts); an unknown device is NOT_FOUND by name',
  'ContainerConfig.stop_signal': "applied: the first signal of StopContainer, over the image's STOPSIGNAL; reported in ContainerStatus",
  'ContainerMetadata.name': 'applied: container identity',
  'ContainerMetadata.attempt': 'applied: container identity',
  'ImageSpec.image': 'applied: the image reference or id the container runs',
  'ImageSpec.annotations': 'applied: returned in ContainerStatus',
  'ImageSpec.user_specified_image': 'applied: returned in ContainerStatus',
  'ImageSpec.runtime_handler': "ignored: a container runs under its pod's runtime handler",
  'ImageSpec.image_ref': 'ignored: kubelet names the image in ImageSpec.image; berth resolves it there',
  'KeyValue.key': 'applied: environment variable name',
  'KeyValue.value': 'applied: environment variable value',
  'Device.container_path': 'applied: absolute, no ".." segments; outside /dev allowed as containerd allows it',
  'Device.host_path': 'applied: a device node, a symlink to one, or a directory of them',
  'Device.permissions': 'applied: the cgroup access, a subset of rwm',
  'CDIDevice.name': 'applied: a fully qualified name, vendor.com/class=name (INVALID_ARGUMENT otherwise)',

  // Mount
  'Mount.container_path': 'applied: bind mount destination',
  'Mount.host_path': 'applied: bind mount source',
  'Mount.readonly': 'applied: ro bind mount',
  'Mount.selinux_relabel':
    'ignored: without SELinux there is no label to set; on a host with SELinux it is refused (FAILED_PRECONDITION), as berth does not relabel volumes',
  'Mount.propagation': 'applied: rprivate, rslave or rshared',
  'Mount.uidMappings': 'applied: an idmapped bind (MOUNT_ATTR_IDMAP) berthd prepares before runc (containers/idmap.ts)',
  'Mount.gidMappings': 'applied: with Mount.uidMappings',
  'Mount.recursive_read_only': 'applied: a recursive read-only bind (mount_setattr AT_RECURSIVE) berthd prepares; needs readonly and private propagation',
  'Mount.image':
    "applied: the image's layers as a read-only overlay berthd mounts, bound at container_path; absent image NOT_FOUND; RemoveImage refused while the container exists; layers idmapped in a pod user namespace",
  'Mount.image_sub_path': 'applied: a subdirectory (or file) of the image volume, resolved inside the image; absolute, `..` or missing INVALID_ARGUMENT',

  // Linux container config
  'LinuxContainerConfig.resources': 'applied: see LinuxContainerResources',
  'LinuxContainerConfig.security_context': 'applied: see LinuxContainerSecurityContext',
  'LinuxContainerResources.cpu_period': 'applied: cpu.period',
  'LinuxContainerResources.cpu_quota': 'applied: cpu.quota',
  'LinuxContainerResources.cpu_shares': 'applied: cpu.shares',
  'LinuxContainerResources.memory_limit_in_bytes': 'applied: memory.limit',
  'LinuxContainerResources.oom_score_adj': "applied: clamped to berthd's own value (no CAP_SYS_RESOURCE), with a warning",
  'LinuxContainerResources.cpuset_cpus': 'applied: cpu.cpus',
  'LinuxContainerResources.cpuset_mems': 'applied: cpu.mems',
  'LinuxContainerResources.hugepage_limits': 'applied: hugepageLimits',
  'LinuxContainerResources.unified': 'applied: cgroup v2 unified keys',
  'LinuxContainerResources.memory_swap_limit_in_bytes': 'applied: memory.swap (ignored with a warning without swap accounting)',
  'HugepageLimit.page_size': 'applied: hugepageLimits[].pageSize',
  'HugepageLimit.limit': 'applied: hugepageLimits[].limit',

  // LinuxContainerSecurityContext
  'LinuxContainerSecurityContext.capabilities': 'applied: see Capability',
  'LinuxContainerSecurityContext.privileged': 'applied: all capabilities and host devices, no seccomp, masked or read-only paths, writable /sys',
  'LinuxContainerSecurityContext.namespace_options': 'applied: see NamespaceOption',
  'LinuxContainerSecurityContext.selinux_options':
    'applied: process.selinuxLabel and linux.mountLabel on a host with SELinux; without, ignored with one warning',
  'LinuxContainerSecurityContext.run_as_user': 'applied: process uid',
  'LinuxContainerSecurityContext.run_as_group': 'applied: process gid',
  'LinuxContainerSecurityContext.run_as_username': "applied: looked up in the image's /etc/passwd",
  'LinuxContainerSecurityContext.readonly_rootfs': 'applied: read-only root',
  'LinuxContainerSecurityContext.supplemental_groups': 'applied: additional gids',
  'LinuxContainerSecurityContext.supplemental_groups_policy': "applied: Strict leaves the image's /etc/group out",
  'LinuxContainerSecurityContext.no_new_privs': 'applied: process.noNewPrivileges',
  'LinuxContainerSecurityContext.masked_paths': 'applied: linux.maskedPaths (defaults when empty)',
  'LinuxContainerSecurityContext.readonly_paths': 'applied: linux.readonlyPaths (defaults when empty)',
  'LinuxContainerSecurityContext.seccomp': "applied: berth's RuntimeDefault, Unconfined, or a Localhost file",
  'LinuxContainerSecurityContext.apparmor': 'applied: on a host with AppArmor; without, an explicit profile other than Unconfined is FAILED_PRECONDITION',
  'LinuxContainerSecurityContext.apparmor_profile': 'applied: deprecated string form, used when apparmor is unset',
  'LinuxContainerSecurityContext.seccomp_profile_path': 'applied: deprecated string form, used when seccomp is unset',
  'Capability.add_capabilities': 'applied: added to the default set ("ALL" allowed)',
  'Capability.drop_capabilities': 'applied: dropped from the set ("ALL" allowed)',
  'Capability.add_ambient_capabilities': 'applied: ambient (and inheritable) set',
};

/** The decision for `Message.field`, or undefined when nobody decided yet. */
export function decisionOf(field: string): Decision | undefined {
  return CONTRACT[field];
}
