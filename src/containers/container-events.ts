/**
 * Container lifecycle events, for GetContainerEvents (kubelet's evented PLEG). The
 * container service publishes one event at each transition kubelet cares about:
 *
 *   created  the row became `created` (CreateContainer succeeded)
 *   started  the row became `running` (StartContainer)
 *   stopped  the container stopped: its exit recorded (by the exit monitor, StopContainer
 *            or recovery), or found stopped without its shim (`unknown`); once per exit
 *   deleted  the row is gone (RemoveContainer, RemovePodSandbox)
 *
 * Each event carries a snapshot of its pod (the sandbox record and the records of the
 * pod's containers) taken when it is published, so that the statuses a subscriber sends
 * describe the pod as it was at that event, however late the subscriber reads it.
 *
 * Every subscriber has its own queue. Publishing never waits: a subscriber whose queue
 * would grow past its bound is cut off (its queue dropped, its wait failing with
 * ResourceExhausted), so a stalled reader costs bounded memory; kubelet then relists.
 *
 * Events published while recovery runs (exits that happened while berthd was down) are
 * kept for a while and handed first to every subscriber that connects in that time, as
 * nobody can subscribe while berthd recovers.
 */
import { nowNs } from '../common/clock.js';
import { BerthError } from '../common/errors.js';
import type { SandboxRecord } from '../sandbox/sandbox-repository.js';
import type { ContainerRecord } from './container-repository.js';

export type ContainerEventType = 'created' | 'started' | 'stopped' | 'deleted';

/** One lifecycle event with its pod as it was then. Shared by all subscribers: read-only. */
export interface ContainerEvent {
  readonly type: ContainerEventType;
  readonly containerId: string;
  readonly sandboxId: string;
  /** When it happened, nanoseconds since the epoch (decimal string). */
  readonly at: string;
  /** The pod's record; undefined when the pod is gone. */
  readonly sandbox: SandboxRecord | undefined;
  /** The pod's containers (past `creating`) at the event; a deleted container is not among them. */
  readonly containers: readonly ContainerRecord[];
}

/** How long the events of recovery wait for subscribers. */
const RECOVERY_EVENTS_KEPT_MS = 5 * 60_000;

export interface ContainerEventsOptions {
  /** The pod's record and its containers' records, now. */
  snapshot(sandboxId: string): { sandbox: SandboxRecord | undefined; containers: ContainerRecord[] };
  /** Events a subscriber may have queued before it is cut off. */
  queueSize: number;
}

/** The event source: the container service publishes, each GetContainerEvents stream subscribes. */
export class ContainerEvents {
  private readonly subscribers = new Set<ContainerEventSubscription>();
  private recovering = false;
  private recovered: ContainerEvent[] = [];
  private forget: NodeJS.Timeout | undefined;

  constructor(private readonly o: ContainerEventsOptions) {}

  /** Tells subscribers of a transition of container `c`; costs nothing while nobody listens. */
  publish(type: ContainerEventType, c: Pick<ContainerRecord, 'id' | 'sandboxId'>): void {
    if (this.subscribers.size === 0 && !this.recovering) return;
    const ev: ContainerEvent = { type, containerId: c.id, sandboxId: c.sandboxId, at: nowNs(), ...this.o.snapshot(c.sandboxId) };
    if (this.recovering && this.recovered.length < this.o.queueSize) this.recovered.push(ev);
    for (const s of this.subscribers) s.push(ev);
  }

  /** A new subscriber, its queue holding the events of recovery still kept. */
  subscribe(): ContainerEventSubscription {
    const s = new ContainerEventSubscription(this.o.queueSize, (gone) => this.subscribers.delete(gone));
    for (const ev of this.recovered) s.push(ev);
    this.subscribers.add(s);
    return s;
  }

  /** Recovery starts: what is published until {@link endRecovery} is kept for later subscribers. */
  beginRecovery(): void {
    this.recovering = true;
  }

  /** Recovery ended: its events are kept a while longer, then dropped. */
  endRecovery(): void {
    this.recovering = false;
    if (this.recovered.length === 0) return;
    clearTimeout(this.forget);
    this.forget = setTimeout(() => (this.recovered = []), RECOVERY_EVENTS_KEPT_MS).unref();
  }

  /** Subscribers now connected. */
  get subscriberCount(): number {
    return this.subscribers.size;
  }

  /** Ends every subscription (berthd drains). */
  close(): void {
    clearTimeout(this.forget);
    this.recovered = [];
    for (const s of [...this.subscribers]) s.close();
  }
}

/** One subscriber's queue. */
export class ContainerEventSubscription {
  private queue: ContainerEvent[] = [];
  private wake: (() => void) | undefined;
  private ended: 'open' | 'closed' | BerthError = 'open';
  private cutOff: (err: BerthError) => void = () => undefined;
  /** Rejects with ResourceExhausted once this subscriber has been cut off; never resolves. */
  readonly cut: Promise<never>;

  constructor(
    private readonly bound: number,
    private readonly unsubscribe: (s: ContainerEventSubscription) => void,
  ) {
    this.cut = new Promise<never>((_, reject) => (this.cutOff = reject));
    this.cut.catch(() => undefined);
  }

  /** Queues an event; past the bound the subscriber is cut off and its queue dropped. */
  push(ev: ContainerEvent): void {
    if (this.ended !== 'open') return;
    if (this.queue.length >= this.bound) {
      const err = new BerthError(
        'ResourceExhausted',
        `GetContainerEvents: the subscriber fell ${this.bound} events behind and was cut off; relist and subscribe again`,
      );
      this.end(err);
      this.cutOff(err);
      return;
    }
    this.queue.push(ev);
    this.wakeUp();
  }

  /**
   * The next event, waiting for one. Undefined once the subscription is closed (or
   * `signal` aborts); ResourceExhausted when the subscriber was cut off.
   */
  async next(signal: AbortSignal): Promise<ContainerEvent | undefined> {
    for (;;) {
      if (this.ended instanceof BerthError) throw this.ended;
      const ev = this.queue.shift();
      if (ev) return ev;
      if (this.ended === 'closed' || signal.aborted) return undefined;
      await new Promise<void>((resolve) => {
        const done = (): void => {
          signal.removeEventListener('abort', done);
          this.wake = undefined;
          resolve();
        };
        this.wake = done;
        signal.addEventListener('abort', done, { once: true });
      });
    }
  }

  /** Events waiting to be read. */
  get queued(): number {
    return this.queue.length;
  }

  /** Ends the subscription; what is queued is dropped. */
  close(): void {
    this.end('closed');
  }

  private end(how: 'closed' | BerthError): void {
    if (this.ended !== 'open') return;
    this.ended = how;
    this.queue = [];
    this.unsubscribe(this);
    this.wakeUp();
  }

  private wakeUp(): void {
    this.wake?.();
  }
}
