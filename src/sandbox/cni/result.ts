/**
 * CNI results: checking what a plugin printed, and reading the pod's IPs out of it.
 *
 * A result is kept exactly as the plugin printed it: it is threaded to the next plugin
 * as `prevResult` and cached for DEL/CHECK, and plugins of spec 0.3.x/0.4.0 expect the
 * fields of their version (`ips[].version`) back. Only the view below is typed.
 */
import { isIPv4 } from 'node:net';
import { parseCidr } from '../../common/cidr.js';
import { compareVersions } from './protocol.js';

export interface CniInterface {
  name: string;
  mac?: string;
  /** Set for interfaces inside the container (the netns path); empty or absent on the host. */
  sandbox?: string;
}

export interface CniIpConfig {
  /** Address with prefix length, "10.88.0.5/16". */
  address: string;
  gateway?: string;
  /** Index into `interfaces`. */
  interface?: number;
}

export interface CniResult {
  cniVersion: string;
  interfaces?: CniInterface[];
  ips?: CniIpConfig[];
  routes?: Array<{ dst: string; gw?: string }>;
  dns?: { nameservers?: string[]; domain?: string; search?: string[]; options?: string[] };
}

/**
 * Parses and checks the stdout of an ADD. Returns the result or why it is unusable.
 * Results of spec 0.1.0/0.2.0 (`ip4`/`ip6` objects) get an equivalent `ips` list added,
 * since nothing chains or caches results of those versions.
 */
export function parseResult(stdout: string, fallbackVersion: string): CniResult | string {
  let doc: unknown;
  try {
    doc = JSON.parse(stdout);
  } catch (err) {
    return stdout.trim() === '' ? 'the plugin printed no result' : `the result is not JSON (${(err as Error).message})`;
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return 'the result is not a JSON object';
  const r = doc as Record<string, unknown>;
  if (r.cniVersion !== undefined && typeof r.cniVersion !== 'string') return 'the result has a non-string "cniVersion"';
  const cniVersion = typeof r.cniVersion === 'string' && r.cniVersion !== '' ? r.cniVersion : fallbackVersion;
  const out: Record<string, unknown> = { ...r, cniVersion };

  if (compareVersions(cniVersion, '0.3.0') < 0 && r.ips === undefined) {
    const ips: CniIpConfig[] = [];
    for (const key of ['ip4', 'ip6']) {
      const legacy = r[key] as { ip?: unknown; gateway?: unknown } | undefined;
      if (legacy && typeof legacy.ip === 'string') {
        ips.push({ address: legacy.ip, ...(typeof legacy.gateway === 'string' ? { gateway: legacy.gateway } : {}) });
      }
    }
    if (ips.length > 0) out.ips = ips;
  }

  if (out.interfaces !== undefined) {
    if (!Array.isArray(out.interfaces)) return 'the result\'s "interfaces" is not an array';
    for (const [i, itf] of (out.interfaces as unknown[]).entries()) {
      if (typeof itf !== 'object' || itf === null || typeof (itf as { name?: unknown }).name !== 'string') {
        return `the result's interfaces[${i}] has no "name"`;
      }
    }
  }
  if (out.ips !== undefined) {
    if (!Array.isArray(out.ips)) return 'the result\'s "ips" is not an array';
    const nIfs = Array.isArray(out.interfaces) ? out.interfaces.length : 0;
    for (const [i, ip] of (out.ips as unknown[]).entries()) {
      if (typeof ip !== 'object' || ip === null) return `the result's ips[${i}] is not an object`;
      const { address, interface: index } = ip as { address?: unknown; interface?: unknown };
      if (typeof address !== 'string' || !parseCidr(address))
        return `the result's ips[${i}].address ${JSON.stringify(address)} is not an address with prefix length`;
      if (index !== undefined && (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index >= nIfs)) {
        return `the result's ips[${i}].interface ${JSON.stringify(index)} is not an index into "interfaces"`;
      }
    }
  }
  if (out.routes !== undefined && !Array.isArray(out.routes)) return 'the result\'s "routes" is not an array';
  if (out.dns !== undefined && (typeof out.dns !== 'object' || out.dns === null)) return 'the result\'s "dns" is not an object';
  return out as unknown as CniResult;
}

/**
 * The pod IPs of a result: the addresses on the container-side interfaces (those with a
 * `sandbox`), IPv4 first, without prefix length. A result whose addresses name no
 * interface (an IPAM-only or legacy result) gives all of its addresses.
 */
export function podIps(result: CniResult): string[] {
  const ifs = result.interfaces ?? [];
  const ips = result.ips ?? [];
  const onSandbox = ips.filter((ip) => ip.interface !== undefined && (ifs[ip.interface]?.sandbox ?? '') !== '');
  const chosen = onSandbox.length > 0 ? onSandbox : ips.filter((ip) => ip.interface === undefined);
  const addrs = [...new Set(chosen.map((ip) => ip.address.slice(0, ip.address.indexOf('/'))))];
  return [...addrs.filter((a) => isIPv4(a)), ...addrs.filter((a) => !isIPv4(a))];
}
