/**
 * Real registries for the image tests, all on 127.0.0.1.
 *
 * `startRegistry()` runs Debian's docker-registry 2.8 (the CNCF distribution registry)
 * with its storage in a temp dir, optionally behind htpasswd Basic auth. `stop()` kills
 * it and removes the dir; nothing may outlive a test.
 *
 * `startRegistryProxy()` puts a small Node server in front of a registry to give it
 * what docker-registry cannot be configured to do: bearer-token auth with its own
 * token endpoint, faults on blob downloads (corrupt, truncated, lying, stalled,
 * failing, redirected), and crafted manifests (schema1, unknown media types). It
 * records every request with all its headers, so tests can check where credentials
 * went.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const REGISTRY_BIN = '/usr/bin/docker-registry';

export interface Registry extends AsyncDisposable {
  /** `127.0.0.1:port`, the form image references take. */
  host: string;
  /** `http://127.0.0.1:port`. */
  url: string;
  /** Where the registry keeps its blobs and repositories. */
  dataDir: string;
  /** The docker-registry process. */
  pid: number;
  /** Everything the registry printed (log level warn). */
  logs(): string;
  stop(): Promise<void>;
}

export interface RegistryOptions {
  /** Require Basic auth with this user (an htpasswd file made with `htpasswd -Bbn`). */
  htpasswd?: { user: string; password: string };
  /** Serve HTTPS with a fresh self-signed certificate for 127.0.0.1. */
  tls?: boolean;
}

/** A port nobody listens on right now (the registry may still lose a race for it; callers retry). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Starts docker-registry on a free 127.0.0.1 port and waits until `GET /v2/` answers. */
export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  const dir = mkdtempSync(join(tmpdir(), 'berth-registry-'));
  try {
    const dataDir = join(dir, 'data');
    const configFile = join(dir, 'config.yml');
    let auth = '';
    if (opts.htpasswd) {
      const file = join(dir, 'htpasswd');
      writeFileSync(file, execFileSync('htpasswd', ['-Bbn', opts.htpasswd.user, opts.htpasswd.password]));
      auth = `auth:\n  htpasswd:\n    realm: berth-test\n    path: ${file}\n`;
    }
    let tls = '';
    if (opts.tls) {
      const cert = join(dir, 'cert.pem');
      const key = join(dir, 'key.pem');
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'rsa:2048',
          '-nodes',
          '-keyout',
          key,
          '-out',
          cert,
          '-days',
          '1',
          '-subj',
          '/CN=127.0.0.1',
          '-addext',
          'subjectAltName=IP:127.0.0.1',
        ],
        { stdio: 'ignore' },
      );
      tls = `  tls:\n    certificate: ${cert}\n    key: ${key}\n`;
    }
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      writeFileSync(configFile, registryConfig(port, dataDir).replace(/( {2}secret: [0-9a-f]+\n)/, `$1${tls}`) + auth);
      const started = await spawnRegistry(configFile, port, opts.tls === true);
      if (started.ok) return registryHandle(started.proc, port, dir, dataDir, started.output, opts.tls === true);
      if (!/address already in use/i.test(started.output.text) || attempt >= 5) {
        throw new Error(`docker-registry did not start:\n${started.output.text}`);
      }
    }
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

function registryConfig(port: number, dataDir: string): string {
  // The secret only signs upload state; a fixed random one silences the registry's warning.
  return [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${dataDir}`,
    '  delete:',
    '    enabled: true',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    `  secret: ${randomBytes(16).toString('hex')}`,
    'health:',
    '  storagedriver:',
    '    enabled: false',
    '',
  ].join('\n');
}

type Spawned = { ok: true; proc: ChildProcess; output: { text: string } } | { ok: false; output: { text: string } };

async function spawnRegistry(configFile: string, port: number, tls: boolean): Promise<Spawned> {
  // A clean environment: REGISTRY_* variables would override the config file.
  const proc = spawn(REGISTRY_BIN, ['serve', configFile], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  const output = { text: '' };
  proc.stdout!.on('data', (d: Buffer) => (output.text += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (output.text += d.toString()));
  let exited = false;
  proc.once('exit', () => (exited = true));
  proc.once('error', (err) => {
    exited = true;
    output.text += String(err);
  });
  const until = Date.now() + 15_000;
  while (Date.now() < until && !exited) {
    const status = await probe(port, tls);
    if (status === 200 || status === 401) return { ok: true, proc, output };
    await sleep(25);
  }
  if (!exited) await kill(proc);
  return { ok: false, output };
}

/** The status of `GET /v2/`, or 0 when nothing answers. */
function probe(port: number, tls: boolean): Promise<number> {
  return new Promise((resolve) => {
    const get = tls ? https.get : http.get;
    const req = get({ host: '127.0.0.1', port, path: '/v2/', agent: false, timeout: 1000, rejectUnauthorized: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => req.destroy());
  });
}

/** Registries not stopped yet, killed and removed if the test process exits without stopping them. */
const live = new Map<ChildProcess, string>();
let exitHookInstalled = false;

function track(proc: ChildProcess, dir: string): void {
  live.set(proc, dir);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const [p, d] of live) {
      p.kill('SIGKILL');
      rmSync(d, { recursive: true, force: true });
    }
  });
}

function registryHandle(proc: ChildProcess, port: number, dir: string, dataDir: string, output: { text: string }, tls: boolean): Registry {
  track(proc, dir);
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      await kill(proc);
      rmSync(dir, { recursive: true, force: true });
      live.delete(proc);
    })());
  return {
    host: `127.0.0.1:${port}`,
    url: `${tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    dataDir,
    pid: proc.pid!,
    logs: () => output.text,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/** SIGTERM, then SIGKILL after 5 s; resolves once the process is gone. */
async function kill(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

// ---------------------------------------------------------------------------------------
// The proxy

/** Fields every blob fault shares. */
interface FaultBase {
  /** The blob the fault applies to; absent: every blob GET. */
  digest?: string;
  /** Only requests whose path starts with this, e.g. `/v2/berth-test/layered/`. */
  pathPrefix?: string;
  /** How many requests the fault has handled so far (the proxy counts). */
  hits?: number;
}

/**
 * What the proxy does to a blob GET it matches (the first matching fault wins):
 * - `corrupt`: flips one byte (at `offset`, default the middle); length stays right.
 * - `truncate`: sends the right headers and `afterBytes` bytes, then closes the connection.
 * - `wrong-length`: declares `contentLength`; sends that many bytes when it is less than
 *   the blob (a clean, short response), or the whole blob then closes the connection when more.
 * - `stall`: sends the headers and `afterBytes` bytes (default 0), then hangs until the client gives up or the proxy stops.
 * - `trickle`: sends `bytesPerTick` bytes every `tickMs` until the blob is sent or the client goes away.
 * - `fail`: answers `status` (default 500) to the first `times` requests, then passes through.
 * - `redirect`: answers 307 to `/_redirected/...` on the proxy (or on a second port with
 *   `crossOrigin`, a different origin as blob storage would be), which serves the same bytes;
 *   `toHost` (host[:port]) names the redirect's host instead (e.g. `localhost:<port>`, or an
 *   address a client must refuse to connect to).
 */
export type BlobFault = FaultBase &
  (
    | { kind: 'corrupt'; offset?: number }
    | { kind: 'truncate'; afterBytes: number }
    | { kind: 'wrong-length'; contentLength: number }
    | { kind: 'stall'; afterBytes?: number }
    | { kind: 'trickle'; bytesPerTick: number; tickMs: number }
    | { kind: 'fail'; times: number; status?: number }
    | { kind: 'redirect'; crossOrigin?: boolean; toHost?: string }
  );

/** A manifest the proxy serves itself for GET/HEAD `/v2/<name>/manifests/<reference>`. */
export interface CraftedManifest {
  name: string;
  reference: string;
  contentType: string;
  body: Buffer | string;
  /** Sent as Docker-Content-Digest; defaults to the sha256 of the body. */
  digest?: string;
}

/** Bearer-token auth the proxy enforces in front of the registry. */
export interface BearerAuth {
  /** Only paths under this need a token (default: everything under `/v2/`). */
  pathPrefix?: string;
  /** Credentials `/token` requires (Basic). */
  user?: string;
  password?: string;
  /** `/token` also issues tokens to requests without credentials. */
  anonymous?: boolean;
  /** Default `berth-test`. */
  service?: string;
  /** Token lifetime in seconds (default 300). */
  expiresIn?: number;
  /** The realm the challenge names (default: the proxy's own `/token`). */
  realm?: string;
}

export interface ProxyOptions {
  bearer?: BearerAuth;
  faults?: BlobFault[];
  manifests?: CraftedManifest[];
  /** Basic credentials the proxy adds on its way upstream (for an htpasswd registry). */
  upstreamAuth?: { user: string; password: string };
}

export interface RecordedRequest {
  method: string;
  /** Path and query as received. */
  path: string;
  /** All headers as received, credentials included. */
  headers: http.IncomingHttpHeaders;
  /** `main`, or `redirect` for the second (cross-origin) port. */
  server: 'main' | 'redirect';
  /** The status answered; set when the response was sent (0 if the connection died first). */
  status?: number;
  /** When the response closed (Date.now()), sent in full or cut off. */
  closedAt?: number;
}

export interface IssuedToken {
  token: string;
  scopes: string[];
  /** The Basic user it was issued to; undefined for anonymous tokens. */
  user: string | undefined;
  expiresAt: number;
}

const BLOB_PATH = /^\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{64})$/;
const REPO_PATH = /^\/v2\/(.+?)\/(?:blobs|manifests|tags)\//;

/**
 * A fault-injecting, token-issuing proxy in front of a registry. Its fields are live:
 * tests may change `faults`, `manifests` and `bearer` between requests.
 */
export class RegistryProxy implements AsyncDisposable {
  readonly requests: RecordedRequest[] = [];
  readonly tokens: IssuedToken[] = [];
  faults: BlobFault[];
  manifests: CraftedManifest[];
  bearer: BearerAuth | undefined;
  private readonly agent = new http.Agent({ keepAlive: false });
  private readonly main: http.Server;
  private readonly redirect: http.Server;

  private constructor(
    readonly upstream: string,
    private readonly opts: ProxyOptions,
  ) {
    this.faults = opts.faults ?? [];
    this.manifests = opts.manifests ?? [];
    this.bearer = opts.bearer;
    this.main = http.createServer((req, res) => this.handle(req, res, 'main'));
    this.redirect = http.createServer((req, res) => this.handle(req, res, 'redirect'));
  }

  /** `127.0.0.1:port` of the proxy. */
  get host(): string {
    return `127.0.0.1:${(this.main.address() as net.AddressInfo).port}`;
  }

  get url(): string {
    return `http://${this.host}`;
  }

  /** `127.0.0.1:port` of the second origin that serves cross-origin redirects. */
  get redirectHost(): string {
    return `127.0.0.1:${(this.redirect.address() as net.AddressInfo).port}`;
  }

  /** The requests that followed a redirect (check their `headers.authorization`). */
  redirected(): RecordedRequest[] {
    return this.requests.filter((r) => r.path.startsWith('/_redirected/'));
  }

  static async start(upstream: string, opts: ProxyOptions = {}): Promise<RegistryProxy> {
    const p = new RegistryProxy(upstream, opts);
    for (const server of [p.main, p.redirect]) {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', resolve);
      });
    }
    return p;
  }

  /** Closes both servers and every connection, stalled ones included. */
  async stop(): Promise<void> {
    for (const server of [this.main, this.redirect]) {
      if (!server.listening) continue;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    }
    this.agent.destroy();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse, server: 'main' | 'redirect'): void {
    const record: RecordedRequest = { method: req.method ?? '', path: req.url ?? '', headers: { ...req.headers }, server };
    this.requests.push(record);
    res.on('close', () => {
      record.status = res.headersSent ? res.statusCode : 0;
      record.closedAt = Date.now();
    });
    this.route(req, res, server).catch((err: Error) => {
      if (!res.headersSent) json(res, 502, { errors: [{ code: 'PROXY', message: err.message }] });
      else res.destroy();
    });
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse, server: 'main' | 'redirect'): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://proxy');
    if (url.pathname.startsWith('/_redirected/')) return this.serveRedirected(req, res, url);
    if (server === 'redirect') return json(res, 404, { errors: [{ code: 'NOT_FOUND' }] });
    if (url.pathname === '/token') return this.issueToken(req, res, url);
    if (!this.authorized(req, res, url.pathname)) return;

    const crafted = this.manifests.find((m) => url.pathname === `/v2/${m.name}/manifests/${m.reference}`);
    if (crafted && (req.method === 'GET' || req.method === 'HEAD')) {
      const body = Buffer.from(crafted.body);
      res.writeHead(200, {
        'content-type': crafted.contentType,
        'content-length': body.length,
        'docker-content-digest': crafted.digest ?? 'sha256:' + createHash('sha256').update(body).digest('hex'),
        'docker-distribution-api-version': 'registry/2.0',
      });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }

    const blob = BLOB_PATH.exec(url.pathname);
    const fault =
      blob && req.method === 'GET'
        ? this.faults.find((f) => (!f.digest || f.digest === blob[2]) && (!f.pathPrefix || url.pathname.startsWith(f.pathPrefix)))
        : undefined;
    if (blob && fault) {
      fault.hits = (fault.hits ?? 0) + 1;
      return this.faulty(req, res, fault, blob[1]!, blob[2]!);
    }
    return this.forward(req, res);
  }

  /** True when the request may pass; otherwise answers 401 with a Bearer challenge. */
  private authorized(req: http.IncomingMessage, res: http.ServerResponse, path: string): boolean {
    const b = this.bearer;
    if (!b || !path.startsWith('/v2/') || (b.pathPrefix && !path.startsWith(b.pathPrefix))) return true;
    const name = REPO_PATH.exec(path)?.[1];
    const presented = /^Bearer (.+)$/i.exec(req.headers.authorization ?? '')?.[1];
    const token = this.tokens.find((t) => t.token === presented && t.expiresAt > Date.now());
    if (token && (!name || token.scopes.some((s) => s.startsWith(`repository:${name}:`)))) return true;
    const scope = name ? `,scope="repository:${name}:pull"` : '';
    res.setHeader('www-authenticate', `Bearer realm="${b.realm ?? `${this.url}/token`}",service="${b.service ?? 'berth-test'}"${scope}`);
    json(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] });
    return false;
  }

  private issueToken(req: http.IncomingMessage, res: http.ServerResponse, url: URL): void {
    const b = this.bearer;
    if (!b) return json(res, 404, { errors: [{ code: 'NOT_FOUND' }] });
    const creds = /^Basic (.+)$/i.exec(req.headers.authorization ?? '')?.[1];
    let user: string | undefined;
    if (creds) {
      const decoded = Buffer.from(creds, 'base64').toString();
      const colon = decoded.indexOf(':');
      if (b.user === undefined || decoded.slice(0, colon) !== b.user || decoded.slice(colon + 1) !== b.password) {
        return json(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] });
      }
      user = b.user;
    } else if (b.user !== undefined && !b.anonymous) {
      res.setHeader('www-authenticate', 'Basic realm="berth-test"');
      return json(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'credentials required' }] });
    }
    // Several scopes may come as repeated parameters or space-separated.
    const scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' ').filter(Boolean));
    const expiresIn = b.expiresIn ?? 300;
    const token = randomBytes(24).toString('base64url');
    this.tokens.push({ token, scopes, user, expiresAt: Date.now() + expiresIn * 1000 });
    json(res, 200, { token, access_token: token, expires_in: expiresIn, issued_at: new Date().toISOString() });
  }

  private upstreamHeaders(req: http.IncomingMessage): http.OutgoingHttpHeaders {
    const headers: http.OutgoingHttpHeaders = { ...req.headers, host: this.upstream };
    delete headers.authorization;
    delete headers.connection;
    if (this.opts.upstreamAuth) {
      const { user, password } = this.opts.upstreamAuth;
      headers.authorization = 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64');
    }
    return headers;
  }

  private upstreamRequest(req: http.IncomingMessage, path: string, method = req.method ?? 'GET'): Promise<http.IncomingMessage> {
    const [hostname, port] = this.upstream.split(':');
    return new Promise((resolve, reject) => {
      const up = http.request({ hostname, port: Number(port), path, method, headers: this.upstreamHeaders(req), agent: this.agent }, resolve);
      up.on('error', reject);
      if (method === 'GET' || method === 'HEAD') up.end();
      else req.pipe(up);
    });
  }

  /** Passes the request through; Location headers pointing upstream are rewritten to the proxy. */
  private async forward(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const up = await this.upstreamRequest(req, req.url ?? '/');
    const headers = { ...up.headers };
    if (headers.location?.startsWith(`http://${this.upstream}/`)) headers.location = this.url + headers.location.slice(`http://${this.upstream}`.length);
    res.writeHead(up.statusCode ?? 502, headers);
    up.pipe(res);
  }

  private async serveRedirected(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> {
    const name = url.searchParams.get('name');
    const digest = url.pathname.slice('/_redirected/'.length);
    if (!name || !/^sha256:[0-9a-f]{64}$/.test(digest)) return json(res, 404, { errors: [{ code: 'NOT_FOUND' }] });
    const up = await this.upstreamRequest(req, `/v2/${name}/blobs/${digest}`, 'GET');
    res.writeHead(up.statusCode ?? 502, {
      'content-type': up.headers['content-type'] ?? 'application/octet-stream',
      ...(up.headers['content-length'] ? { 'content-length': up.headers['content-length'] } : {}),
    });
    up.pipe(res);
  }

  private async faulty(req: http.IncomingMessage, res: http.ServerResponse, fault: BlobFault, name: string, digest: string): Promise<void> {
    if (fault.kind === 'fail' && (fault.hits ?? 0) > fault.times) return this.forward(req, res);
    if (fault.kind === 'fail') return json(res, fault.status ?? 500, { errors: [{ code: 'UNKNOWN', message: 'injected failure' }] });
    if (fault.kind === 'redirect') {
      const host = fault.toHost ?? (fault.crossOrigin ? this.redirectHost : this.host);
      res.writeHead(307, { location: `http://${host}/_redirected/${digest}?name=${encodeURIComponent(name)}`, 'content-length': 0 });
      res.end();
      return;
    }
    const up = await this.upstreamRequest(req, req.url ?? '/');
    const size = Number(up.headers['content-length'] ?? NaN);
    if (up.statusCode !== 200 || !Number.isFinite(size)) {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
      return;
    }
    const declared = fault.kind === 'wrong-length' ? fault.contentLength : size;
    res.writeHead(200, { ...up.headers, 'content-length': declared });
    res.flushHeaders();
    // How many bytes to send before ending, cutting or hanging.
    const limit = fault.kind === 'truncate' ? fault.afterBytes : fault.kind === 'stall' ? (fault.afterBytes ?? 0) : Math.min(declared, size);
    const corruptAt = fault.kind === 'corrupt' ? (fault.offset ?? Math.floor(size / 2)) : -1;
    if (fault.kind === 'trickle') {
      const parts: Buffer[] = [];
      for await (const chunk of up as AsyncIterable<Buffer>) parts.push(chunk);
      const body = Buffer.concat(parts);
      for (let at = 0; at < body.length && !res.destroyed; at += fault.bytesPerTick) {
        res.write(body.subarray(at, at + fault.bytesPerTick));
        await sleep(fault.tickMs);
      }
      res.end();
      return;
    }
    let sent = 0;
    for await (const chunk of up as AsyncIterable<Buffer>) {
      let part = chunk.subarray(0, Math.max(0, limit - sent));
      if (corruptAt >= sent && corruptAt < sent + part.length) {
        part = Buffer.from(part);
        part[corruptAt - sent]! ^= 0xff;
      }
      if (part.length > 0 && !res.write(part)) await new Promise((resolve) => res.once('drain', resolve));
      sent += part.length;
      if (sent >= limit) break;
    }
    up.destroy();
    if (fault.kind === 'stall') return; // the response stays open until the client gives up or stop()
    if (fault.kind === 'truncate' || (fault.kind === 'wrong-length' && declared > size)) {
      // A half-close after the queued bytes: the client sees EOF short of Content-Length.
      res.socket?.end();
      return;
    }
    res.end();
  }
}

/** Starts a {@link RegistryProxy} on 127.0.0.1 in front of `upstream` (`127.0.0.1:port`). */
export function startRegistryProxy(upstream: string, opts: ProxyOptions = {}): Promise<RegistryProxy> {
  return RegistryProxy.start(upstream, opts);
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': data.length });
  res.end(data);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
