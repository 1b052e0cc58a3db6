/**
 * The pure parts of the CNI exec protocol (CNI spec 1.0, "Section 2: Execution
 * Protocol"): what a plugin receives in its environment and on stdin, and how its error
 * object is read. No I/O here, so every rule is unit-tested without root.
 */
import type { CniNetworkList, CniPluginConf } from './conf-dir.js';

export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'VERSION';

/** One port published through the `portMappings` capability (CNI CONVENTIONS.md). */
export interface PortMapping {
  hostPort: number;
  containerPort: number;
  protocol: 'tcp' | 'udp' | 'sctp';
  hostIP?: string;
}

/** What a runtime tells the plugins about one attachment of a container to a network. */
export interface CniRuntimeConf {
  /** The sandbox id. */
  containerId: string;
  /** Path of the pinned netns file; '' when it is gone (only meaningful for DEL). */
  netns: string;
  /** Interface name inside the netns, e.g. 'eth0'. */
  ifName: string;
  /** CNI_ARGS pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, …); `IgnoreUnknown=1` is added. */
  args: Array<[string, string]>;
  /** Passed as `runtimeConfig`, each key only to the plugins declaring that capability. */
  capabilityArgs?: { portMappings?: PortMapping[]; [cap: string]: unknown };
}

/** Compares dotted versions numerically ("0.4.0" < "1.0.0"); '' counts as 0.1.0 (pre-VERSION plugins). */
export function compareVersions(a: string, b: string): number {
  const parts = (v: string): number[] => (v === '' ? '0.1.0' : v).split('.').map((p) => Number.parseInt(p, 10) || 0);
  const pa = parts(a);
  const pb = parts(b);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return Math.sign(d);
  }
  return 0;
}

/** CHECK and the cached result on DEL arrived with spec 0.4.0. */
export function supportsCheck(cniVersion: string): boolean {
  return compareVersions(cniVersion, '0.4.0') >= 0;
}

const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const ARG_TOKEN = /^[^;=\0]+$/;

/**
 * Why the runtime conf breaks the spec's rules (container id and interface name syntax,
 * CNI_ARGS pairs that would not survive "K=V;K=V" encoding), or undefined when it is fine.
 */
export function runtimeConfProblem(rt: CniRuntimeConf): string | undefined {
  if (!CONTAINER_ID.test(rt.containerId)) {
    return `container id "${rt.containerId}" must start with a letter or digit and hold only letters, digits, '_', '.' and '-'`;
  }
  const ifName = rt.ifName;
  if (ifName === '' || ifName === '.' || ifName === '..' || ifName.length > 15 || /[/:\s]/.test(ifName)) {
    return `interface name "${ifName}" is not a valid Linux interface name`;
  }
  for (const [k, v] of rt.args) {
    if (!ARG_TOKEN.test(k) || (v !== '' && !ARG_TOKEN.test(v))) return `CNI argument ${JSON.stringify(k)} has a key or value containing ';', '=' or NUL`;
  }
  if (rt.netns.includes('\0')) return 'the netns path contains NUL';
  return undefined;
}

/** CNI_ARGS: `IgnoreUnknown=1` first (so plugins ignore keys they do not know), then the pairs. */
export function cniArgs(args: Array<[string, string]>): string {
  const pairs = args.some(([k]) => k === 'IgnoreUnknown') ? args : [['IgnoreUnknown', '1'] as [string, string], ...args];
  return pairs.map(([k, v]) => `${k}=${v}`).join(';');
}

/** The protocol's environment variables for one invocation. */
export function cniEnv(command: CniCommand, rt: CniRuntimeConf, binDirs: string[]): Record<string, string> {
  return {
    CNI_COMMAND: command,
    CNI_CONTAINERID: rt.containerId,
    CNI_NETNS: rt.netns,
    CNI_IFNAME: rt.ifName,
    CNI_ARGS: cniArgs(rt.args),
    CNI_PATH: binDirs.join(':'),
  };
}

/**
 * The JSON a plugin reads on stdin: its own config with the list's `name` and
 * `cniVersion` inserted, `prevResult` when there is one, and `runtimeConfig` holding
 * only the capabilities the plugin declares `true` in its `capabilities` map (and the
 * runtime has values for). A `runtimeConfig` already in the file is replaced, as libcni
 * does; with no matching capability the key is left out.
 */
export function pluginStdin(
  list: Pick<CniNetworkList, 'name' | 'cniVersion'>,
  plugin: CniPluginConf,
  prevResult: unknown,
  capabilityArgs: Record<string, unknown> | undefined,
): Record<string, unknown> {
  const conf: Record<string, unknown> = { ...plugin, name: list.name, cniVersion: list.cniVersion };
  delete conf.runtimeConfig;
  delete conf.prevResult;
  if (prevResult !== undefined) conf.prevResult = prevResult;
  const declared = plugin.capabilities;
  if (typeof declared === 'object' && declared !== null && capabilityArgs) {
    const rc: Record<string, unknown> = {};
    for (const [cap, on] of Object.entries(declared as Record<string, unknown>)) {
      if (on === true && capabilityArgs[cap] !== undefined) rc[cap] = capabilityArgs[cap];
    }
    if (Object.keys(rc).length > 0) conf.runtimeConfig = rc;
  }
  return conf;
}

/** A plugin type names a file in the bin dirs, never a path. */
export function pluginTypeProblem(type: string): string | undefined {
  if (type === '' || type === '.' || type === '..' || type.includes('/') || type.includes('\0')) {
    return `plugin type ${JSON.stringify(type)} is not a plain executable name`;
  }
  return undefined;
}

/** The most of a plugin's stderr quoted in an error message. */
const MAX_QUOTED = 2048;

/**
 * The message of a failed invocation: the CNI error object `{code, msg, details}` on
 * stdout when there is one ("msg: details"), else the stderr text, else how it ended.
 */
export function failureMessage(stdout: string, stderr: string, ended: { code: number | null; signal: string | null }): string {
  const obj = parseErrorObject(stdout);
  if (obj) return obj;
  const text = (stderr.trim() || stdout.trim()).slice(-MAX_QUOTED);
  const how = ended.signal !== null ? `killed by ${ended.signal}` : `exit code ${ended.code ?? '?'}`;
  return text !== '' ? `${text} (${how})` : how;
}

function parseErrorObject(stdout: string): string | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(stdout);
  } catch {
    return undefined;
  }
  if (typeof doc !== 'object' || doc === null) return undefined;
  const { code, msg, details } = doc as { code?: unknown; msg?: unknown; details?: unknown };
  if (typeof msg !== 'string' && typeof code !== 'number') return undefined;
  let text = typeof msg === 'string' && msg !== '' ? msg : `CNI error code ${String(code)}`;
  if (typeof details === 'string' && details !== '') text += `: ${details}`;
  return text.slice(0, MAX_QUOTED);
}
