/**
 * Where a pull may connect to: a guard against server-side request forgery through
 * registry redirects (a blob's 307 to storage) and token realms. A registry names those
 * hosts, so a hostile one could point berthd (host root, on the node's network) at the
 * node's loopback services or the cloud's metadata service (169.254.169.254,
 * fd00:ec2::254, Alibaba Cloud's 100.100.100.200), whose answers would then flow into
 * error messages and caches.
 *
 * The rule: an address that is loopback, link-local or unspecified is connected to only
 * when the registry the pull is for (the host of the image reference, or of the mirror
 * in use) is itself of that same class, so that a registry on 127.0.0.1 or `localhost`
 * keeps working with storage on loopback. Every other address (public, and the private
 * ranges of on-premises registries and their storage: 10/8, 172.16/12, 192.168/16,
 * fc00::/7) is allowed. The check runs on the addresses a name resolves to, at connect
 * (the agents' `lookup`), so a name that resolves to a permitted address first and a
 * forbidden one later (DNS rebinding) is caught; an IP literal is checked before the
 * request, as Node does not look it up.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import { BerthError } from '../../common/errors.js';

/** The classes of address the rule is about; `other` is every routable one (private included). */
export type AddressClass = 'loopback' | 'link-local' | 'unspecified' | 'other';

/** The class of an IPv4 address given as four bytes. */
function classOf4(b: number[]): AddressClass {
  if (b[0] === 127) return 'loopback';
  if (b[0] === 169 && b[1] === 254) return 'link-local';
  // Alibaba Cloud's instance metadata service: a shared (100.64/10) address, but the same service as 169.254.169.254.
  if (b[0] === 100 && b[1] === 100 && b[2] === 100 && b[3] === 200) return 'link-local';
  // 0.0.0.0/8 "this network": a connect to 0.0.0.0 reaches the local host.
  if (b[0] === 0) return 'unspecified';
  return 'other';
}

/** The eight 16-bit words of an IPv6 address (without brackets or zone); undefined if it is none. */
function words6(ip: string): number[] | undefined {
  let text = ip;
  const tail: number[] = [];
  const dotted = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const b = dotted[2]!.split('.').map(Number);
    if (b.some((x) => x > 255)) return undefined;
    tail.push((b[0]! << 8) | b[1]!, (b[2]! << 8) | b[3]!);
    text = dotted[1]!.endsWith('::') ? dotted[1]! : dotted[1]!.slice(0, -1);
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const parse = (s: string): number[] => (s === '' ? [] : s.split(':').map((h) => parseInt(h, 16)));
  const head = parse(halves[0]!);
  const rest = halves.length === 2 ? parse(halves[1]!) : [];
  const fill = 8 - tail.length - head.length - rest.length;
  if (halves.length === 1 ? fill !== 0 : fill < 0) return undefined;
  const w = [...head, ...new Array<number>(halves.length === 2 ? fill : 0).fill(0), ...rest, ...tail];
  return w.length === 8 && w.every((x) => Number.isInteger(x) && x >= 0 && x <= 0xffff) ? w : undefined;
}

/**
 * The class of an IP address (IPv4 or IPv6, IPv6 with or without brackets and zone); an
 * IPv6 form that carries an IPv4 address (mapped ::ffff:a.b.c.d, the old compatible
 * ::a.b.c.d, NAT64 64:ff9b::a.b.c.d) has the class of that IPv4 address. Undefined when
 * `ip` is not an IP address.
 */
export function addressClass(ip: string): AddressClass | undefined {
  const bare = ip.replace(/^\[(.*)\]$/, '$1').replace(/%.*$/, '');
  const v = isIP(bare);
  if (v === 4) return classOf4(bare.split('.').map(Number));
  if (v !== 6) return undefined;
  const w = words6(bare.toLowerCase());
  if (!w) return undefined;
  const v4 = (): number[] => [w[6]! >> 8, w[6]! & 0xff, w[7]! >> 8, w[7]! & 0xff];
  const zeroTo = (n: number): boolean => w.slice(0, n).every((x) => x === 0);
  if (zeroTo(8)) return 'unspecified';
  if (zeroTo(7) && w[7] === 1) return 'loopback';
  if ((w[0]! & 0xffc0) === 0xfe80) return 'link-local';
  // AWS's instance metadata service over IPv6: a unique-local address, but the same service as 169.254.169.254.
  if (w.join(':') === [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254].join(':')) return 'link-local';
  if (zeroTo(5) && w[5] === 0xffff) return classOf4(v4());
  if (zeroTo(6)) return classOf4(v4());
  if (w[0] === 0x64 && w[1] === 0xff9b && w.slice(2, 6).every((x) => x === 0)) return classOf4(v4());
  return 'other';
}

type Resolver = (hostname: string) => Promise<string[]>;

/** Every address `hostname` resolves to, through the system resolver (as connections do). */
export const systemResolver: Resolver = (hostname) =>
  new Promise((resolve, reject) => {
    dnsLookup(hostname, { all: true, verbatim: true }, (err, addresses: LookupAddress[]) => (err ? reject(err) : resolve(addresses.map((a) => a.address))));
  });

/**
 * The rule for the connections of one registry endpoint (see the top of this file);
 * `registryHost` is host[:port] as in the image reference or the mirror's URL.
 */
export class AddressPolicy {
  constructor(
    readonly registryHost: string,
    private readonly resolve: Resolver = systemResolver,
  ) {}

  /** The classes of the registry's own addresses (looked up only when a special address is met). */
  private async registryClasses(): Promise<Set<AddressClass>> {
    const hostname = new URL(`http://${this.registryHost}`).hostname.replace(/^\[(.*)\]$/, '$1');
    const literal = addressClass(hostname);
    if (literal) return new Set([literal]);
    try {
      return new Set((await this.resolve(hostname)).map((a) => addressClass(a) ?? 'other'));
    } catch {
      return new Set();
    }
  }

  /** Throws PermissionDenied when a connection to `host` at one of `addresses` breaks the rule. */
  async check(host: string, addresses: string[]): Promise<void> {
    let mine: Set<AddressClass> | undefined;
    for (const a of addresses) {
      const cls = addressClass(a) ?? 'other';
      if (cls === 'other') continue;
      mine ??= await this.registryClasses();
      if (mine.has(cls)) continue;
      const shown = host === a || `[${a}]` === host ? a : `${host} (${a})`;
      throw new BerthError(
        'PermissionDenied',
        `refusing to connect to ${shown}, a ${cls} address, for registry ${this.registryHost}, which is not on one: ` +
          'berth follows redirects and token realms to loopback, link-local and unspecified addresses only for a registry of that same class',
      );
    }
  }

  /** Checks the host of `url` when it is an IP literal (Node looks no literal up, so `lookup` never sees it). */
  async checkLiteral(url: URL): Promise<void> {
    const bare = url.hostname.replace(/^\[(.*)\]$/, '$1');
    if (isIP(bare)) await this.check(url.hostname, [bare]);
  }

  /** A `lookup` for net.connect that resolves as Node does and refuses what the rule forbids. */
  lookup(resolve: typeof dnsLookup = dnsLookup): LookupFunction {
    return ((hostname: string, options: { all?: boolean }, callback: (err: Error | null, address?: unknown, family?: number) => void) => {
      resolve(hostname, { ...options, all: true }, (err, addresses: LookupAddress[]) => {
        if (err) return callback(err);
        this.check(
          hostname,
          addresses.map((a) => a.address),
        ).then(
          () => (options.all ? callback(null, addresses) : callback(null, addresses[0]!.address, addresses[0]!.family)),
          (e: Error) => callback(e),
        );
      });
    }) as unknown as LookupFunction;
  }
}
