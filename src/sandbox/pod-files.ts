/**
 * The files a pod's containers share: /etc/hostname, /etc/resolv.conf, /etc/hosts (kept
 * in the sandbox dir and bind-mounted into each container) and the pod's /dev/shm, a
 * tmpfs sized per pod.
 *
 * The renderers are pure and follow the kubelet and containerd: resolv.conf from the
 * CRI `DNSConfig`, or the host's file as is when the pod has none; a Kubernetes-style
 * hosts file. For host-network pods the caller uses the host's /etc/hosts instead.
 */
import { isIP } from 'node:net';
import { mkdir } from 'node:fs/promises';
import { stageFile } from '../common/atomic-file.js';
import { settleAll } from '../common/settle-all.js';
import { join } from 'node:path';
import { BerthError, errnoOf, failedPrecondition, invalidArgument, messageOf } from '../common/errors.js';
import { isMountPoint, isMountPointAsync, mount, MNT, MS, umount } from '../common/mount.js';

/** The CRI `DNSConfig` of a pod. */
export interface DnsConfig {
  servers: string[];
  searches: string[];
  options: string[];
}

/** A CRI-style host alias: one IP and its names. */
export interface HostAlias {
  ip: string;
  hostnames: string[];
}

/**
 * Bounds of resolv.conf. glibc and musl read 3 nameservers (MAXNS) and the API server
 * refuses more, so a fourth would be silently ignored: refused instead. Search paths use
 * the kubelet's limits since Kubernetes 1.28 (32 paths, 2048 characters; glibc ≥ 2.26
 * has no limit of its own). An option is one short word like `ndots:5` or `edns0`.
 */
export const MAX_NAMESERVERS = 3;
export const MAX_SEARCHES = 32;
export const MAX_SEARCH_CHARS = 2048;
const MAX_OPTIONS = 32;
const MAX_OPTION_LENGTH = 64;

/** Size of the pod's /dev/shm when the pod does not say: 64 MiB, as Docker and containerd. */
export const DEFAULT_SHM_BYTES = 64 * 1024 * 1024;

const LABEL = /^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$/;
const SEARCH_DOMAIN = /^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/;
const OPTION = /^[A-Za-z0-9_][A-Za-z0-9_:.-]*$/;

/**
 * Validates a pod hostname: at most 63 characters (the kubelet truncates pod names to
 * that), made of RFC 1123 labels (letters, digits, inner hyphens). Dots between labels
 * are accepted: the kubelet derives the hostname from the pod name when the pod sets
 * none, and a pod name may be a dotted DNS subdomain.
 */
export function validateHostname(name: string): void {
  if (typeof name !== 'string' || name.length === 0) throw invalidArgument('pod hostname: empty');
  if (name.length > 63) throw invalidArgument(`pod hostname ${JSON.stringify(name)}: longer than 63 characters`);
  if (!name.split('.').every((label) => LABEL.test(label))) {
    throw invalidArgument(`pod hostname ${JSON.stringify(name)}: not an RFC 1123 name (letters, digits and inner hyphens, labels joined by dots)`);
  }
}

/**
 * resolv.conf for a pod. With a `DNSConfig` holding anything: one `nameserver` line per
 * server, one `search` line, one `options` line (the order the kubelet writes).
 * Without one, or with an empty one (containerd's rule), the host's resolv.conf as is.
 * Every entry is checked (InvalidArgument): servers must be IP addresses, and no entry
 * may hold whitespace, so nothing can smuggle in a line of its own.
 */
export function resolvConf(dns: DnsConfig | undefined, hostResolvConf: string): string {
  if (dns === undefined) return hostResolvConf;
  const servers = dns.servers ?? [];
  const searches = dns.searches ?? [];
  const options = dns.options ?? [];
  if (servers.length + searches.length + options.length === 0) return hostResolvConf;

  if (servers.length > MAX_NAMESERVERS) {
    throw invalidArgument(`DNS config: ${servers.length} nameservers; resolvers use at most ${MAX_NAMESERVERS}`);
  }
  for (const server of servers) {
    if (isIP(server) === 0) throw invalidArgument(`DNS config: nameserver ${JSON.stringify(server)} is not an IP address`);
  }
  if (searches.length > MAX_SEARCHES) {
    throw invalidArgument(`DNS config: ${searches.length} search domains; at most ${MAX_SEARCHES}`);
  }
  for (const domain of searches) {
    if (domain.length > 253 || !SEARCH_DOMAIN.test(domain)) {
      throw invalidArgument(`DNS config: search domain ${JSON.stringify(domain)} is not a DNS name`);
    }
  }
  const searchLine = searches.join(' ');
  if (searchLine.length > MAX_SEARCH_CHARS) {
    throw invalidArgument(`DNS config: the search list is ${searchLine.length} characters; at most ${MAX_SEARCH_CHARS}`);
  }
  if (options.length > MAX_OPTIONS) throw invalidArgument(`DNS config: ${options.length} options; at most ${MAX_OPTIONS}`);
  for (const option of options) {
    if (option.length > MAX_OPTION_LENGTH || !OPTION.test(option)) {
      throw invalidArgument(`DNS config: option ${JSON.stringify(option)} is not a resolv.conf option`);
    }
  }

  let out = servers.map((s) => `nameserver ${s}\n`).join('');
  if (searches.length > 0) out += `search ${searchLine}\n`;
  if (options.length > 0) out += `options ${options.join(' ')}\n`;
  return out;
}

/**
 * The pod's /etc/hosts, as the kubelet writes it (pkg/kubelet/kubelet_pods.go): the
 * loopback and IPv6 names, then `<podIP>\t<hostname>` per pod IP, then the host aliases.
 * One deliberate difference: ip6-mcastprefix is ff00::0 (the kubelet writes fe00::0).
 */
export function hostsFile(hostname: string, podIps: string[], hostAliases: HostAlias[] = []): string {
  validateHostname(hostname);
  for (const ip of podIps) {
    if (isIP(ip) === 0) throw invalidArgument(`hosts file: pod IP ${JSON.stringify(ip)} is not an IP address`);
  }
  let out =
    '# Kubernetes-managed hosts file.\n' +
    '127.0.0.1\tlocalhost\n' +
    '::1\tlocalhost ip6-localhost ip6-loopback\n' +
    'fe00::0\tip6-localnet\n' +
    'ff00::0\tip6-mcastprefix\n' +
    'fe00::1\tip6-allnodes\n' +
    'fe00::2\tip6-allrouters\n';
  for (const ip of podIps) out += `${ip}\t${hostname}\n`;
  if (hostAliases.length > 0) {
    out += '\n# Entries added by HostAliases.\n';
    for (const alias of hostAliases) {
      if (isIP(alias.ip) === 0) throw invalidArgument(`host alias: ${JSON.stringify(alias.ip)} is not an IP address`);
      if (alias.hostnames.length === 0) throw invalidArgument(`host alias ${alias.ip}: no hostnames`);
      for (const name of alias.hostnames) {
        if (name.length > 253 || !name.split('.').every((l) => LABEL.test(l))) {
          throw invalidArgument(`host alias ${alias.ip}: ${JSON.stringify(name)} is not a DNS name`);
        }
      }
      out += `${alias.ip}\t${alias.hostnames.join('\t')}\n`;
    }
  }
  return out;
}

/**
 * Writes `<dir>/hostname`, `<dir>/resolv.conf` and `<dir>/hosts`, each atomically with
 * mode 0644 (containers bind-mount them read by any user), creating `dir` if needed.
 * Returns their paths. Not fsynced: they matter only while the pod's namespaces exist,
 * and a reboot ends those (recovery then marks the pod NOTREADY and kubelet makes a new
 * one); a kill -9 of berthd leaves them whole, as the page cache survives it. (On this
 * kind of VM the step's time is the pool's round trips, not the fsyncs; on slower disks
 * each fsync was several ms.)
 */
export async function writePodFiles(
  dir: string,
  files: { hostname: string; resolvConf: string; hosts: string },
): Promise<{ hostname: string; resolvConf: string; hosts: string }> {
  validateHostname(files.hostname);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const paths = { hostname: join(dir, 'hostname'), resolvConf: join(dir, 'resolv.conf'), hosts: join(dir, 'hosts') };
  // Three files of their own, each written whole (temp file, rename): side by side.
  const write = async (path: string, content: string): Promise<void> => (await stageFile(path, content, 0o644, { sync: false })).commit();
  await settleAll([write(paths.hostname, `${files.hostname}\n`), write(paths.resolvConf, files.resolvConf), write(paths.hosts, files.hosts)]);
  return paths;
}

/**
 * Mounts the pod's /dev/shm: a tmpfs at `path` (created with parents) with
 * `mode=1777,size=<bytes>,nosuid,nodev,noexec`; 0 bytes means {@link DEFAULT_SHM_BYTES}.
 * Refuses to stack a second mount on a path that already is a mount point.
 */
export async function mountShm(path: string, sizeBytes: number): Promise<void> {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
    throw invalidArgument(`pod shm size ${sizeBytes}: must be a whole number of bytes`);
  }
  const size = sizeBytes === 0 ? DEFAULT_SHM_BYTES : sizeBytes;
  await mkdir(path, { recursive: true, mode: 0o755 });
  if (await isMountPointAsync(path)) throw new BerthError('AlreadyExists', `pod shm ${path}: already a mount point`);
  try {
    await mount('shm', path, 'tmpfs', MS.NOSUID | MS.NODEV | MS.NOEXEC, `mode=1777,size=${size}`);
  } catch (err) {
    throw failedPrecondition(`pod shm ${path}: mounting a tmpfs failed: ${messageOf(err)}`);
  }
}

/**
 * Unmounts the pod's /dev/shm (MNT_DETACH, as containerd: a container still using it
 * keeps its copy until it exits). Idempotent: not mounted or missing is fine. Leaves
 * the empty directory to whoever removes the sandbox dir.
 */
export async function unmountShm(path: string): Promise<void> {
  // Unmounted first, then mountinfo (longer with every mount on the node: read on the
  // pool) is read once to confirm; again only while something is stacked there.
  for (let round = 0; round < 8; round++) {
    try {
      await umount(path, MNT.DETACH | MNT.NOFOLLOW);
    } catch (err) {
      const errno = errnoOf(err);
      if (errno !== 'EINVAL' && errno !== 'ENOENT' && isMountPoint(path)) {
        throw new BerthError('Internal', `pod shm ${path}: unmounting failed: ${messageOf(err)}`, { cause: err });
      }
    }
    if (!(await isMountPointAsync(path))) return;
  }
  throw new BerthError('Internal', `pod shm ${path}: still mounted`);
}
