/**
 * Pod sysctls: which kernel namespace isolates a sysctl, whether a pod may set it, and
 * setting it inside the pod's pinned namespaces.
 *
 * Kubernetes accepts two spellings: `net.ipv4.ip_forward` and `net/ipv4/ip_forward`;
 * the slash form exists so a component may contain dots (an interface name such as
 * `eno2.100`: `net/ipv4/conf/eno2.100/rp_filter`). Classification follows the kubelet
 * (pkg/kubelet/sysctl/namespace.go): `net.*` is the network namespace's; `kernel.shm*`,
 * `kernel.msg*`, `kernel.sem`, `fs.mqueue.*` are the IPC namespace's; the UTS names are
 * refused (the hostname comes from the pod config). Anything else would change the whole
 * node and is refused. Within `net.*`, the kernel keeps a few tables global (registered
 * for the initial network namespace only); those are listed below and refused too.
 *
 * The values are written with one `nsenter --net=<pin> --ipc=<pin> sh -c <fixed script>
 * sh <path> <value>…`: names and values travel as arguments of a constant script, never
 * as shell text, and the script writes through `tee` so a refusal carries the kernel's
 * errno ("Invalid argument"). This needs only util-linux, dash and coreutils, not procps.
 */
import { throwIfAborted } from '../common/abort.js';
import { BerthError, invalidArgument } from '../common/errors.js';
import { runHostTool } from '../common/process.js';
import { isPinned, type PinnedNamespaces, type PodNamespace } from './namespaces.js';

/**
 * `net` sysctls the kernel does not namespace: present in the initial network namespace
 * only. Found by diffing `find /proc/sys/net` on the host and in a new netns on Linux
 * 6.18 (per-device `conf/<if>` and `neigh/<if>` entries aside, which are namespaced but
 * exist only where the device does). Older kernels keep more global (net.core.rmem_max,
 * wmem_max, rmem_default, wmem_default were per-netns only from 6.x): those fail at write
 * time with "not present in the pod's network namespace", which names them just as well.
 */
const GLOBAL_NET_SYSCTLS: ReadonlySet<string> = new Set([
  'net/core/bpf_jit_enable',
  'net/core/bpf_jit_harden',
  'net/core/bpf_jit_kallsyms',
  'net/core/bpf_jit_limit',
  'net/core/busy_poll',
  'net/core/busy_read',
  'net/core/default_qdisc',
  'net/core/dev_weight',
  'net/core/dev_weight_rx_bias',
  'net/core/dev_weight_tx_bias',
  'net/core/devconf_inherit_init_net',
  'net/core/fb_tunnels_only_for_init_net',
  'net/core/flow_limit_cpu_bitmap',
  'net/core/flow_limit_table_len',
  'net/core/gro_normal_batch',
  'net/core/high_order_alloc_disable',
  'net/core/max_skb_frags',
  'net/core/mem_pcpu_rsv',
  'net/core/message_burst',
  'net/core/message_cost',
  'net/core/netdev_budget',
  'net/core/netdev_budget_usecs',
  'net/core/netdev_max_backlog',
  'net/core/netdev_rss_key',
  'net/core/netdev_tstamp_prequeue',
  'net/core/netdev_unregister_timeout_secs',
  'net/core/rps_sock_flow_entries',
  'net/core/skb_defer_max',
  'net/core/warnings',
  'net/ipv4/cipso_cache_bucket_size',
  'net/ipv4/cipso_cache_enable',
  'net/ipv4/cipso_rbm_optfmt',
  'net/ipv4/cipso_rbm_strictvalid',
  'net/ipv4/fib_sync_mem',
  'net/ipv4/inet_peer_maxttl',
  'net/ipv4/inet_peer_minttl',
  'net/ipv4/inet_peer_threshold',
  'net/ipv4/ipfrag_secret_interval',
  'net/ipv4/route/error_burst',
  'net/ipv4/route/error_cost',
  'net/ipv4/route/gc_elasticity',
  'net/ipv4/route/gc_interval',
  'net/ipv4/route/gc_min_interval',
  'net/ipv4/route/gc_min_interval_ms',
  'net/ipv4/route/gc_thresh',
  'net/ipv4/route/gc_timeout',
  'net/ipv4/route/max_size',
  'net/ipv4/route/redirect_load',
  'net/ipv4/route/redirect_number',
  'net/ipv4/route/redirect_silence',
  'net/ipv4/tcp_available_ulp',
  'net/ipv4/tcp_low_latency',
  'net/ipv4/tcp_max_orphans',
  'net/ipv4/tcp_mem',
  'net/ipv4/udp_mem',
  'net/ipv6/calipso_cache_bucket_size',
  'net/ipv6/calipso_cache_enable',
  'net/ipv6/ip6frag_secret_interval',
  'net/ipv6/mld_max_msf',
  'net/ipv6/mld_qrv',
  'net/netfilter/nf_log_all_netns',
  'net/nf_conntrack_max',
]);

/** The IPC namespace's sysctls, exact names (besides the prefixes below). */
const IPC_SYSCTLS: ReadonlySet<string> = new Set(['kernel/sem', 'kernel/sem_next_id']);
const IPC_PREFIXES = ['kernel/shm', 'kernel/msg', 'fs/mqueue/'];
const UTS_SYSCTLS: ReadonlySet<string> = new Set(['kernel/hostname', 'kernel/domainname']);

/** A dotted name: components of letters, digits, `_`, `-`. */
const DOTTED_NAME = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;
/** A slash name: components may also hold dots and the other characters of interface names. */
const SLASH_NAME = /^[A-Za-z0-9_-]+(\/[A-Za-z0-9_.@+:-]+)+$/;
/** Longest value accepted: a sysctl string is at most a page. */
const MAX_VALUE_LENGTH = 4096;

/**
 * The path of a sysctl below /proc/sys (`net/ipv4/ip_forward`), or undefined when the
 * name is not a well-formed sysctl name in either spelling.
 */
export function sysctlPath(name: string): string | undefined {
  if (name.includes('/')) {
    if (!SLASH_NAME.test(name)) return undefined;
    if (name.split('/').some((c) => c === '.' || c === '..')) return undefined;
    return name;
  }
  return DOTTED_NAME.test(name) ? name.replaceAll('.', '/') : undefined;
}

/**
 * The pod namespace that isolates sysctl `name`, or undefined when no pod namespace does
 * (setting it would change the node) or the name is malformed.
 */
export function classifySysctl(name: string): PodNamespace | undefined {
  const path = sysctlPath(name);
  if (path === undefined) return undefined;
  if (path.startsWith('net/')) return GLOBAL_NET_SYSCTLS.has(path) ? undefined : 'net';
  if (IPC_SYSCTLS.has(path) || IPC_PREFIXES.some((p) => path.startsWith(p))) return 'ipc';
  if (UTS_SYSCTLS.has(path)) return 'uts';
  return undefined;
}

/** Why a pod may not set `name` = `value`, or undefined when it may. */
function refusal(name: string, value: string, hostNamespaces: { network: boolean; ipc: boolean }): string | undefined {
  if (sysctlPath(name) === undefined) return 'not a valid sysctl name';
  if (typeof value !== 'string') return 'the value must be a string';
  if (/[\n\r\0]/.test(value)) return 'the value contains a line break or NUL';
  if (value.length > MAX_VALUE_LENGTH) return `the value is longer than ${MAX_VALUE_LENGTH} characters`;
  switch (classifySysctl(name)) {
    case undefined:
      return 'not namespaced: setting it would change the whole node';
    case 'uts':
      return "the UTS namespace is berth's: set the pod's hostname instead";
    case 'net':
      return hostNamespaces.network ? "would change the host: the pod uses the host's network namespace" : undefined;
    case 'ipc':
      return hostNamespaces.ipc ? "would change the host: the pod uses the host's IPC namespace" : undefined;
  }
}

/**
 * Checks every sysctl a pod asks for; throws one InvalidArgument naming each refused
 * sysctl and why (not namespaced, or the pod shares the host's network / IPC namespace
 * so setting it would change the host).
 */
export function validateSysctls(sysctls: Record<string, string>, hostNamespaces: { network: boolean; ipc: boolean }): void {
  const problems: string[] = [];
  for (const [name, value] of Object.entries(sysctls)) {
    const why = refusal(name, value, hostNamespaces);
    if (why !== undefined) problems.push(`sysctl ${JSON.stringify(name)}: ${why}`);
  }
  if (problems.length > 0) throw invalidArgument(problems.join('; '));
}

/**
 * The script run inside the pod's namespaces: pairs of (path below /proc/sys, value) as
 * its arguments. A missing file means the kernel does not namespace the sysctl (exit 3);
 * a refused write reports tee's errno text (exit 4). The failing pair's index goes to
 * stderr on a line of its own so the error names the sysctl.
 */
const APPLY_SCRIPT = [
  'i=0',
  'while [ "$#" -ge 2 ]; do',
  '  if [ ! -f "/proc/sys/$1" ]; then echo "berth-sysctl:$i:missing" >&2; exit 3; fi',
  '  printf "%s" "$2" | tee -- "/proc/sys/$1" >/dev/null || { echo "berth-sysctl:$i:refused" >&2; exit 4; }',
  '  i=$((i+1)); shift 2',
  'done',
].join('\n');

const NS_NAMES: Record<PodNamespace, string> = { net: 'network', ipc: 'IPC', uts: 'UTS' };

/**
 * Sets `sysctls` inside the pod's pinned namespaces with one nsenter, entering only the
 * namespaces needed. Refuses (InvalidArgument, nothing written) a sysctl whose namespace
 * is not pinned, since writing it would change the host; validate with
 * {@link validateSysctls} first for the friendlier message. A kernel refusal names the
 * sysctl and stops there (the sandbox is torn down anyway).
 */
export async function applySysctls(ns: PinnedNamespaces, sysctls: Record<string, string>, signal?: AbortSignal): Promise<void> {
  const entries = Object.entries(sysctls);
  if (entries.length === 0) return;
  throwIfAborted(signal, 'pod sysctls');
  validateSysctls(sysctls, { network: false, ipc: false });

  const needed = new Set<PodNamespace>();
  const args: string[] = [];
  for (const [name] of entries) {
    const kind = classifySysctl(name) as 'net' | 'ipc';
    const pin = ns[kind];
    if (pin === undefined) {
      throw invalidArgument(`sysctl ${JSON.stringify(name)}: the pod has no ${NS_NAMES[kind]} namespace of its own; setting it would change the host`);
    }
    if (!isPinned(pin)) {
      throw new BerthError('FailedPrecondition', `sysctl ${JSON.stringify(name)}: ${pin} is not a pinned namespace`);
    }
    if (!needed.has(kind)) args.push(`--${kind}=${pin}`);
    needed.add(kind);
  }
  args.push('--', 'sh', '-c', APPLY_SCRIPT, 'sh');
  for (const [name, value] of entries) args.push(sysctlPath(name) as string, value);

  const res = await runHostTool('nsenter', args);
  if (res.code === 0) return;
  const mark = /berth-sysctl:(\d+):(missing|refused)/.exec(res.stderr);
  const failed = mark ? entries[Number(mark[1])] : undefined;
  if (mark && failed) {
    const [name, value] = failed;
    const kind = classifySysctl(name) as PodNamespace;
    if (mark[2] === 'missing') {
      throw invalidArgument(`sysctl ${JSON.stringify(name)}: not present in the pod's ${NS_NAMES[kind]} namespace (this kernel does not namespace it)`);
    }
    const errno = /tee: [^\n]*: ([^\n]+)/.exec(res.stderr)?.[1] ?? res.stderr.replace(mark[0], '').trim();
    throw invalidArgument(`sysctl ${JSON.stringify(name)} = ${JSON.stringify(value)}: the kernel refused it: ${errno}`);
  }
  const why = res.stderr.trim() || (res.signal !== null ? `killed by ${res.signal}` : `exit status ${res.code}`);
  throw new BerthError('Internal', `pod sysctls: nsenter failed: ${why}`);
}
