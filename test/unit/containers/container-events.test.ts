/**
 * The container event source (src/containers/container-events.ts): order, the pod
 * snapshot taken at publish time, the bounded queue that cuts a stalled subscriber off,
 * the events of recovery kept for later subscribers, and the ends of a subscription.
 */
import assert from 'node:assert/strict';
import { isKind } from '../../../src/common/errors.js';
import { ContainerEvents } from '../../../src/containers/container-events.js';
import type { ContainerFacts, ContainerRecord } from '../../../src/containers/container-repository.js';
import { containerFactsV1 } from '../../../src/store/typed-records-v6.js';
import type { ContainerState } from '../../../src/containers/state.js';

function record(id: string, state: ContainerState): ContainerRecord {
  return {
    id,
    sandboxId: 'pod',
    name: id,
    attempt: 0,
    imageId: 'img',
    imageRef: 'busybox',
    state,
    facts: containerFactsV1({}) as unknown as ContainerFacts,
    request: {},
    logPath: '',
    pid: null,
    shimPid: null,
    exitCode: null,
    reason: '',
    message: '',
    createdAt: '1',
    startedAt: '0',
    finishedAt: '0',
  };
}

describe('containers: lifecycle events', () => {
  let states: Map<string, ContainerState>;
  let snapshots: number;
  const source = (queueSize = 100): ContainerEvents =>
    new ContainerEvents({
      queueSize,
      snapshot: () => {
        snapshots++;
        return { sandbox: undefined, containers: [...states].map(([id, s]) => record(id, s)) };
      },
    });
  const never = new AbortController().signal;
  beforeEach(() => {
    states = new Map();
    snapshots = 0;
  });

  it('gives every subscriber every event in order, with the pod as it was at each', async () => {
    const events = source();
    const a = events.subscribe();
    const b = events.subscribe();
    states.set('c1', 'created');
    events.publish('created', { id: 'c1', sandboxId: 'pod' });
    states.set('c1', 'running');
    events.publish('started', { id: 'c1', sandboxId: 'pod' });
    states.set('c1', 'exited');
    events.publish('stopped', { id: 'c1', sandboxId: 'pod' });
    states.delete('c1');
    events.publish('deleted', { id: 'c1', sandboxId: 'pod' });
    assert.equal(snapshots, 4, 'one snapshot per event, shared by the subscribers');
    for (const sub of [a, b]) {
      const got = [];
      for (let i = 0; i < 4; i++) {
        const ev = (await sub.next(never))!;
        got.push([ev.type, ev.containerId, ev.containers.map((c) => c.state).join()]);
      }
      assert.deepEqual(got, [
        ['created', 'c1', 'created'],
        ['started', 'c1', 'running'],
        ['stopped', 'c1', 'exited'],
        ['deleted', 'c1', ''],
      ]);
    }
  });

  it('takes no snapshot while nobody listens', () => {
    const events = source();
    events.publish('created', { id: 'c1', sandboxId: 'pod' });
    assert.equal(snapshots, 0);
  });

  it('cuts off a subscriber whose queue overflows, with ResourceExhausted, and keeps serving the others', async () => {
    const events = source(3);
    const slow = events.subscribe();
    const fast = events.subscribe();
    const seen: string[] = [];
    for (let i = 0; i < 5; i++) {
      events.publish('created', { id: `c${i}`, sandboxId: 'pod' });
      seen.push((await fast.next(never))!.containerId);
    }
    assert.deepEqual(seen, ['c0', 'c1', 'c2', 'c3', 'c4']);
    assert.equal(events.subscriberCount, 1, 'the slow one is unsubscribed');
    assert.equal(slow.queued, 0, 'its queue is dropped');
    await assert.rejects(slow.cut, (e) => isKind(e, 'ResourceExhausted'));
    await assert.rejects(slow.next(never), (e) => isKind(e, 'ResourceExhausted') && /3 events behind/.test(e.message));
  });

  it('keeps what recovery published for subscribers that come after it', async () => {
    const events = source();
    events.beginRecovery();
    states.set('c1', 'exited');
    events.publish('stopped', { id: 'c1', sandboxId: 'pod' });
    events.endRecovery();
    events.publish('created', { id: 'c2', sandboxId: 'pod' });
    const sub = events.subscribe();
    const ev = (await sub.next(never))!;
    assert.deepEqual([ev.type, ev.containerId, ev.containers[0]!.state], ['stopped', 'c1', 'exited']);
    events.publish('started', { id: 'c3', sandboxId: 'pod' });
    assert.equal((await sub.next(never))!.containerId, 'c3', 'the event published before it subscribed is not replayed');
    events.close();
  });

  it('a waiting subscriber wakes with no event when it is closed or its signal aborts', async () => {
    const events = source();
    const a = events.subscribe();
    const waiting = a.next(never);
    events.close();
    assert.equal(await waiting, undefined);
    const b = events.subscribe();
    const ac = new AbortController();
    const waitingB = b.next(ac.signal);
    ac.abort();
    assert.equal(await waitingB, undefined);
  });
});
