/**
 * The streaming server: Exec, Attach and PortForward hand back a URL of this server,
 * `http://<address>:<port>/<exec|attach|portforward>/<token>`, which kubelet (or crictl) opens
 * with an HTTP/1.1 upgrade to SPDY/3.1 or to WebSocket (ws-*.ts). Each token is random, single-use and expires
 * after `streaming.token_ttl_seconds`; the request it stands for was validated when the
 * RPC handed it out. The server listens on 127.0.0.1 by default.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { WebSocket, WebSocketServer } from 'ws';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { StreamingConfig } from '../config/schema.js';
import type { ContainerService } from '../containers/container-service.js';
import type { SandboxService } from '../sandbox/sandbox-service.js';
import { PORT_FORWARD_PROTOCOL, servePortForward } from './portforward.js';
import { negotiate, serveRemoteCommand, SPDY_PROTOCOLS, type RemoteProcess, type SpdyProtocol } from './remotecommand.js';
import { PodConnector } from './pod-connector.js';
import { SpdySession } from './spdy-session.js';
import { StreamBudget } from './stream-budget.js';
import { MAX_WS_PORTS, portsOfQuery, serveWsPortForward, WS_PORT_FORWARD_PROTOCOLS } from './ws-portforward.js';
import { negotiateWs, REMOTECOMMAND_CHANNELS, serveWsRemoteCommand, WS_REMOTECOMMAND_PROTOCOLS, wsTraits } from './ws-remotecommand.js';
import { MAX_WS_MESSAGE_BYTES, WsChannels } from './ws-session.js';

export interface ExecRequestInfo {
  containerId: string;
  cmd: string[];
  tty: boolean;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

type Pending = { kind: 'exec' | 'attach'; req: ExecRequestInfo; expires: number } | { kind: 'portforward'; podId: string; expires: number };

export interface StreamingServerOptions {
  config: StreamingConfig;
  containers: ContainerService;
  sandboxes: SandboxService;
  log: Logger;
}

/** How long connecting to a pod's port may take (both loopback addresses, any wait for a turn). */
const DIAL_TIMEOUT_MS = 10_000;
/** Port-forward connects under way at once, across all sessions. */
const MAX_CONCURRENT_DIALS = 32;

/** Most URLs handed out and not yet used at once; the oldest go first beyond it. */
const MAX_PENDING = 4096;

/** Most SPDY streams open at once across all sessions (REFUSED_STREAM beyond). */
const MAX_STREAMS_TOTAL = 4096;

export class StreamingServer {
  private readonly server: Server;
  private readonly pending = new Map<string, Pending>();
  private readonly sockets = new Set<Duplex>();
  private readonly streamBudget = new StreamBudget(MAX_STREAMS_TOTAL);
  private readonly pods: PodConnector;
  /** Made on the first WebSocket upgrade: the `ws` package costs an idle berthd ~1.5 MiB and kubelet uses SPDY. */
  private wssInstance: WebSocketServer | undefined;
  /** The subprotocol chosen for a WebSocket upgrade under way. */
  private readonly chosen = new WeakMap<IncomingMessage, string>();
  private port = 0;

  private get wss(): WebSocketServer {
    if (!this.wssInstance) {
      const ws = createRequire(import.meta.url)('ws') as { WebSocketServer: typeof WebSocketServer };
      this.wssInstance = new ws.WebSocketServer({
        noServer: true,
        clientTracking: false,
        perMessageDeflate: false,
        maxPayload: MAX_WS_MESSAGE_BYTES,
        autoPong: false,
        handleProtocols: (_offered, req) => this.chosen.get(req) ?? false,
      });
    }
    return this.wssInstance;
  }

  constructor(private readonly o: StreamingServerOptions) {
    this.pods = new PodConnector(o.sandboxes, { timeoutMs: DIAL_TIMEOUT_MS, maxConcurrent: MAX_CONCURRENT_DIALS });
    this.server = createServer((req, res) => this.onRequest(req, res));
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head));
    this.server.on('clientError', (_err, socket: Duplex) => socket.destroy());
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.o.config.port, this.o.config.address, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.port = (this.server.address() as AddressInfo).port;
    this.o.log.info('streaming server listening', { address: this.o.config.address, port: this.port });
  }

  /** Base URL of the server (host bracketed when IPv6). */
  /** Streaming sessions (exec, attach, port-forward) open now, and URLs handed out but not yet used. */
  get sessions(): { open: number; pendingUrls: number } {
    return { open: this.sockets.size, pendingUrls: this.pending.size };
  }

  get baseUrl(): string {
    const a = this.o.config.address;
    return `http://${a.includes(':') ? `[${a}]` : a}:${this.port}`;
  }

  /** A single-use URL for an exec already validated by the caller. */
  execUrl(req: ExecRequestInfo): string {
    return `${this.baseUrl}/exec/${this.register({ kind: 'exec', req, expires: Date.now() + this.o.config.token_ttl_seconds * 1000 })}`;
  }

  /** A single-use URL for an attach already validated by the caller (`cmd` unused). */
  attachUrl(req: ExecRequestInfo): string {
    return `${this.baseUrl}/attach/${this.register({ kind: 'attach', req, expires: Date.now() + this.o.config.token_ttl_seconds * 1000 })}`;
  }

  /** A single-use URL for port forwarding into a pod already validated by the caller. */
  portForwardUrl(podId: string): string {
    return `${this.baseUrl}/portforward/${this.register({ kind: 'portforward', podId, expires: Date.now() + this.o.config.token_ttl_seconds * 1000 })}`;
  }

  private register(p: Pending): string {
    const now = Date.now();
    for (const [t, v] of this.pending) if (v.expires <= now) this.pending.delete(t);
    while (this.pending.size >= MAX_PENDING) this.pending.delete(this.pending.keys().next().value!);
    const token = randomBytes(24).toString('base64url');
    this.pending.set(token, p);
    return token;
  }

  /** Takes (and so uses up) the request behind a URL path like /exec/<token>. */
  private take(url: string | undefined): Pending | undefined {
    const found = this.lookup(url);
    if (!found) return undefined;
    this.pending.delete(found[0]);
    return found[1].expires > Date.now() ? found[1] : undefined;
  }

  /** The token and request behind a URL path, left unused. */
  private lookup(url: string | undefined): [string, Pending] | undefined {
    const m = /^\/(exec|attach|portforward)\/([A-Za-z0-9_-]{16,64})(?:\?.*)?$/.exec(url ?? '');
    if (!m) return undefined;
    const p = this.pending.get(m[2]!);
    return p && p.kind === m[1] ? [m[2]!, p] : undefined;
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const known =
      /^\/(exec|attach|portforward)\/[A-Za-z0-9_-]{16,64}(?:\?.*)?$/.test(req.url ?? '') && this.pending.has((req.url ?? '').split('/')[2]!.split('?')[0]!);
    res.writeHead(known ? 400 : 404, { 'content-type': 'text/plain' });
    res.end(known ? 'this URL takes an HTTP upgrade to SPDY/3.1 or WebSocket\n' : 'unknown or expired streaming URL\n');
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const refuse = (code: number, text: string, msg: string): void => {
      socket.end(`HTTP/1.1 ${code} ${text}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(msg)}\r\nConnection: close\r\n\r\n${msg}`);
    };
    socket.on('error', () => undefined);
    const upgrade = String(req.headers.upgrade ?? '').toLowerCase();
    const upgrades = upgrade.split(',').map((s) => s.trim());
    if (upgrades.includes('websocket')) return this.onWebSocket(req, socket, head, refuse);
    if (!upgrades.includes('spdy/3.1')) {
      // The token is left unused: the client may retry with SPDY or WebSocket.
      return refuse(400, 'Bad Request', `berth's streaming server speaks SPDY/3.1 and WebSocket only, not "${upgrade}"\n`);
    }
    const p = this.take(req.url);
    if (!p) return refuse(404, 'Not Found', 'unknown or expired streaming URL\n');
    const offered = String(req.headers['x-stream-protocol-version'] ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== '');
    const protocol = p.kind !== 'portforward' ? negotiate(offered) : offered.includes(PORT_FORWARD_PROTOCOL) ? PORT_FORWARD_PROTOCOL : undefined;
    const supported = p.kind !== 'portforward' ? SPDY_PROTOCOLS.join(', ') : PORT_FORWARD_PROTOCOL;
    if (!protocol) return refuse(403, 'Forbidden', `no stream protocol in common: offered ${offered.join(', ') || 'none'}, supported ${supported}\n`);
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: ${protocol}\r\n\r\n`);
    this.track(socket);
    const session = new SpdySession(socket, head, { budget: this.streamBudget });
    session.on('error', (err: unknown) => this.o.log.debug('streaming session error', { error: messageOf(err) }));
    if (p.kind === 'portforward') {
      this.o.log.debug('port-forward stream', { pod: p.podId });
      servePortForward(
        session,
        p.podId,
        (port, signal) => this.pods.connect(p.podId, port, signal),
        this.o.config.stream_creation_timeout_seconds * 1000,
        this.o.log.child({ pod: p.podId }),
      );
      return;
    }
    const { req: r } = p;
    const protocolV = protocol as SpdyProtocol;
    const log = this.o.log.child({ container: r.containerId });
    log.debug(`${p.kind} stream`, { protocol, tty: r.tty, stdin: r.stdin });
    void serveRemoteCommand(session, protocolV, r, this.o.config.stream_creation_timeout_seconds * 1000, this.starter(p.kind, r), log).catch((err: unknown) => {
      log.warn('exec stream failed', { error: messageOf(err) });
      session.destroy();
    });
  }

  /** Starts the process behind an exec or attach URL (the same for SPDY and WebSocket). */
  private starter(kind: 'exec' | 'attach', r: ExecRequestInfo): () => Promise<RemoteProcess> {
    return kind === 'exec'
      ? () => this.o.containers.openExec(r.containerId, r.cmd, { tty: r.tty, stdin: r.stdin })
      : async () => this.o.containers.openAttach(r.containerId, { stdin: r.stdin });
  }

  /** Counts an upgraded socket as open (closed by close()) and applies the idle timeout. */
  private track(socket: Duplex): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const idle = this.o.config.idle_timeout_seconds * 1000;
    if (idle > 0) {
      (socket as Socket).setTimeout?.(idle, () => socket.destroy());
    }
  }

  /**
   * A WebSocket upgrade: the subprotocol (and, for port-forward, the ports of the query)
   * are checked before the URL is used up, so a refused client may try again.
   */
  private onWebSocket(req: IncomingMessage, socket: Duplex, head: Buffer, refuse: (code: number, text: string, msg: string) => void): void {
    const found = this.lookup(req.url);
    if (!found || found[1].expires <= Date.now()) return refuse(404, 'Not Found', 'unknown or expired streaming URL\n');
    const [token, p] = found;
    const offered = String(req.headers['sec-websocket-protocol'] ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== '');
    const supported = p.kind === 'portforward' ? WS_PORT_FORWARD_PROTOCOLS : WS_REMOTECOMMAND_PROTOCOLS;
    const protocol = negotiateWs<string>(offered, supported, 'channel.k8s.io');
    if (!protocol) {
      return refuse(400, 'Bad Request', `no WebSocket subprotocol in common: offered ${offered.join(', ')}; berth speaks ${supported.join(', ')}\n`);
    }
    const ports = p.kind === 'portforward' ? portsOfQuery(req.url ?? '') : [];
    if (typeof ports === 'string') return refuse(400, 'Bad Request', `${ports}\n`);
    if (req.method !== 'GET') return refuse(405, 'Method Not Allowed', 'a WebSocket upgrade is a GET request\n');
    // Each forwarded port, or the one exec or attach, counts as a stream of the server's total.
    const units = p.kind === 'portforward' ? ports.length : 1;
    let taken = 0;
    while (taken < units && this.streamBudget.take()) taken++;
    const release = (): void => {
      for (; taken > 0; taken--) this.streamBudget.release();
    };
    if (taken < units) {
      release();
      return refuse(503, 'Service Unavailable', `too many streams open (${this.streamBudget.max}); try again later\n`);
    }
    socket.once('close', release);
    this.pending.delete(token);
    if (offered.length > 0) this.chosen.set(req, protocol);
    this.wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      this.track(socket);
      const base64 = protocol.includes('base64');
      if (p.kind === 'portforward') {
        const log = this.o.log.child({ pod: p.podId });
        log.debug('port-forward stream (WebSocket)', { protocol, ports });
        const ch = new WsChannels(ws, { base64, channels: 2 * Math.min(ports.length, MAX_WS_PORTS), closeSignal: false });
        ch.on('abort', (reason: string) => log.debug('WebSocket session cut off', { reason }));
        serveWsPortForward(ch, p.podId, ports, (port, signal) => this.pods.connect(p.podId, port, signal), log);
        return;
      }
      const { req: r } = p;
      const log = this.o.log.child({ container: r.containerId });
      log.debug(`${p.kind} stream (WebSocket)`, { protocol, tty: r.tty, stdin: r.stdin });
      const traits = wsTraits(protocol as (typeof WS_REMOTECOMMAND_PROTOCOLS)[number]);
      const ch = new WsChannels(ws, { base64, channels: REMOTECOMMAND_CHANNELS, closeSignal: traits.closeSignal });
      ch.on('abort', (reason: string) => log.debug('WebSocket session cut off', { reason }));
      void serveWsRemoteCommand(ch, traits, r, this.starter(p.kind, r), log).catch((err: unknown) => {
        log.warn('exec stream failed', { error: messageOf(err) });
        ch.abort(messageOf(err));
      });
    });
  }

  /** Stops listening and cuts every open stream. */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
