/**
 * The metrics endpoint (`[metrics] address`): plain HTTP, loopback by default, serving
 * `/metrics` (berthd's own series) and `/metrics/cadvisor` (per-container and per-pod
 * usage under cAdvisor's names) in the Prometheus text format. Nothing else is served.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { cadvisorFamilies, type CadvisorPodSample } from './cadvisor.js';
import { render, TEXT_CONTENT_TYPE } from './exposition.js';

export interface MetricsServerOptions {
  /** "host:port" ("[::1]:9102" for IPv6); port 0 picks a free one. */
  address: string;
  /** The text of /metrics. */
  metrics(): string;
  /** The samples of /metrics/cadvisor. */
  cadvisor(): Promise<CadvisorPodSample[]>;
  log: Logger;
}

/** Splits "host:port" or "[v6]:port". */
export function parseHostPort(address: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(address);
  if (!m) return undefined;
  const port = Number(m[3]);
  return port <= 65535 ? { host: m[1] ?? m[2]!, port } : undefined;
}

export class MetricsServer {
  private server: Server | undefined;
  /** The address it listens on once started, e.g. "127.0.0.1:9102". */
  address: string | undefined;

  constructor(private readonly o: MetricsServerOptions) {}

  async start(): Promise<void> {
    const hp = parseHostPort(this.o.address);
    if (!hp) throw new Error(`metrics.address "${this.o.address}" is not host:port`);
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      const body: Promise<string> | undefined =
        path === '/metrics'
          ? Promise.resolve().then(() => this.o.metrics())
          : path === '/metrics/cadvisor'
            ? this.o.cadvisor().then((p) => render(cadvisorFamilies(p)))
            : undefined;
      if (!body) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: berth serves /metrics and /metrics/cadvisor\n');
        return;
      }
      body.then(
        (text) => res.writeHead(200, { 'content-type': TEXT_CONTENT_TYPE }).end(req.method === 'HEAD' ? undefined : text),
        (err: unknown) => {
          this.o.log.warn('metrics scrape failed', { path, error: messageOf(err) });
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`${messageOf(err)}\n`);
        },
      );
    });
    server.keepAliveTimeout = 30_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(hp.port, hp.host, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    this.server = server;
    const a = server.address() as AddressInfo;
    this.address = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}
