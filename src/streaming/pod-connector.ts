/**
 * Connections into pods for port forwarding: to a port on the pod's loopback, inside its
 * network namespace (or the host's loopback for a host-network pod). The connect never
 * holds a thread (see connectInNetns); at most `maxConcurrent` connects are under way
 * at once, later ones wait their turn within the same deadline.
 */
import { connect, type Socket } from 'node:net';
import { connectInNetns } from '../common/sys.js';
import type { SandboxService } from '../sandbox/sandbox-service.js';

export interface PodConnectorOptions {
  /** How long one connection may take, waiting for a turn included. */
  timeoutMs: number;
  /** Connects under way at once. */
  maxConcurrent: number;
}

export class PodConnector {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(
    private readonly sandboxes: SandboxService,
    private readonly o: PodConnectorOptions,
  ) {}

  /** Connects under way now. */
  get inProgress(): number {
    return this.active;
  }

  /** A connection to `port` on the pod's loopback; `signal` abandons it (the socket is destroyed). */
  async connect(podId: string, port: number, signal?: AbortSignal): Promise<Socket> {
    const sb = this.sandboxes.find(podId);
    if (!sb || sb.state !== 'ready') throw new Error(`pod ${podId} is not ready`);
    const pod = this.sandboxes.containerView(sb.id);
    const netns = pod.namespaces.net;
    if (!pod.hostNetwork && netns === undefined) throw new Error(`pod ${podId} has no network namespace`);
    const deadline = Date.now() + this.o.timeoutMs;
    await this.turn(deadline, signal);
    try {
      const left = deadline - Date.now();
      if (pod.hostNetwork || netns === undefined) return await connectHost(port, left, signal);
      return await connectInNetns(netns, port, left, signal);
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }

  /** Waits for a free slot (taking it), until the deadline or the abort. */
  private turn(deadline: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason as Error);
    if (this.active < this.o.maxConcurrent) {
      this.active++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const go = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', give);
        this.active++;
        resolve();
      };
      const give = (): void => {
        clearTimeout(timer);
        const i = this.waiting.indexOf(go);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal?.aborted ? (signal.reason as Error) : Object.assign(new Error('timed out waiting for a connect slot'), { code: 'ETIMEDOUT' }));
      };
      const timer = setTimeout(give, Math.max(0, deadline - Date.now()));
      signal?.addEventListener('abort', give, { once: true });
      this.waiting.push(go);
    });
  }
}

/** A connection to the host's 127.0.0.1:`port` (host-network pods). */
function connectHost(port: number, timeoutMs: number, signal?: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const c = connect({ host: '127.0.0.1', port, timeout: timeoutMs });
    const fail = (err: Error): void => {
      signal?.removeEventListener('abort', onAbort);
      c.destroy();
      reject(err);
    };
    const onAbort = (): void => fail(signal!.reason as Error);
    signal?.addEventListener('abort', onAbort, { once: true });
    c.once('timeout', () => fail(Object.assign(new Error(`connect to port ${port} timed out`), { code: 'ETIMEDOUT' })));
    c.once('error', fail);
    c.once('connect', () => {
      signal?.removeEventListener('abort', onAbort);
      c.off('error', fail);
      c.setTimeout(0);
      c.removeAllListeners('timeout');
      resolve(c);
    });
  });
}
