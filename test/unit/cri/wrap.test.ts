/**
 * The RPC wrapper over a real grpc-js server and client on a unix socket, in process:
 * readiness gating, deadline and cancellation as AbortSignal, the error mapping,
 * malformed bytes, draining. Handlers here are test doubles; the wrapper is the real one.
 */
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '../../../src/common/errors.js';
import { createLogger } from '../../../src/common/logger.js';
import { criApi } from '../../../src/cri/proto.js';
import { ServingState } from '../../../src/cri/serving-state.js';
import { AsyncLocalStorage } from 'node:async_hooks';
import { keptAnswer, keptAnswerWith, wrapService, type RpcObserver } from '../../../src/cri/wrap.js';
import { until } from '../../helpers/berthd.js';
import { criClients, grpcError, type CriClients } from '../../helpers/cri-client.js';

type Handler = (req: unknown, ctx: { signal: AbortSignal; deadline: Date | undefined; method: string }) => Promise<unknown>;

describe('cri: the RPC wrapper', () => {
  let dir: string;
  let server: grpc.Server | undefined;
  let state: ServingState;
  let clients: CriClients | undefined;
  let logLines: string[];

  /** Serves the RuntimeService through the real wrapper with the given handlers. */
  async function serve(
    handlers: Record<string, Handler>,
    observers: RpcObserver[] = [],
    durable?: () => Promise<void>,
    service: unknown = criApi().runtime.v1.RuntimeService.service,
  ): Promise<CriClients> {
    const log = createLogger('debug', (l) => logLines.push(l));
    server = new grpc.Server();
    const svc = wrapService({ state, log, observers, durable }, service as never, handlers as never);
    server.addService(svc.definition, svc.implementation);
    const socket = join(dir, 's.sock');
    await new Promise<void>((res, rej) => server!.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
    clients = criClients(socket);
    return clients;
  }

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-wrap-'));
    state = new ServingState();
    logLines = [];
  });

  afterEach(() => {
    clients?.close();
    server?.forceShutdown();
    clients = undefined;
    server = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  const version = { version: '0.1.0', runtime_name: 'x', runtime_version: '1', runtime_api_version: 'v1' };

  it('answers UNAVAILABLE while recovering, then serves', async () => {
    const h: Record<string, Handler> = {};
    h.Version = async () => version;
    const c = await serve(h);
    const e = await grpcError(c.runtime.Version({}));
    assert.equal(e.code, grpc.status.UNAVAILABLE);
    assert.match(e.details, /recovering/);
    state.ready();
    assert.equal((await c.runtime.Version({})).runtime_name, 'x');
  });

  it('answers a change only once it is durable; status and list calls do not wait for that', async () => {
    let release!: () => void;
    const synced = new Promise<void>((r) => (release = r));
    let syncs = 0;
    const h: Record<string, Handler> = {};
    h.StopContainer = async () => ({});
    h.ContainerStatus = async (req) => ({ status: { id: (req as { container_id: string }).container_id }, info: {} });
    h.ListContainers = async () => ({ containers: [] });
    const c = await serve(h, [], () => {
      syncs++;
      return synced;
    });
    state.ready();
    let stopped = false;
    const stop = c.runtime.StopContainer({ container_id: 'c1', timeout: 0 }).then(() => (stopped = true));
    await until(async () => (syncs === 1 ? true : undefined), 5000);
    // The stop's commit is not on disk yet: reads answer meanwhile, without a sync of their own.
    assert.equal((await c.runtime.ContainerStatus({ container_id: 'c1' })).status?.id, 'c1');
    assert.deepEqual((await c.runtime.ListContainers({})).containers, []);
    assert.equal(stopped, false);
    assert.equal(syncs, 1);
    release();
    await stop;
    assert.equal(stopped, true);
  });

  it('answers UNIMPLEMENTED naming the RPC when there is no handler', async () => {
    const h: Record<string, Handler> = {};
    state.ready();
    const c = await serve(h);
    const e = await grpcError(c.runtime.RunPodSandbox({}));
    assert.equal(e.code, grpc.status.UNIMPLEMENTED);
    assert.equal(e.details, 'RunPodSandbox is not implemented by berth yet');
  });

  it('maps error kinds to codes and anything else to INTERNAL', async () => {
    const h: Record<string, Handler> = {};
    state.ready();
    h.ContainerStatus = async () => {
      throw new BerthError('NotFound', 'container "abc" not found');
    };
    h.RemoveContainer = async () => {
      throw new TypeError('oops');
    };
    const c = await serve(h);
    const nf = await grpcError(c.runtime.ContainerStatus({ container_id: 'abc' }));
    assert.equal(nf.code, grpc.status.NOT_FOUND);
    assert.equal(nf.details, 'container "abc" not found');
    const internal = await grpcError(c.runtime.RemoveContainer({ container_id: 'abc' }));
    assert.equal(internal.code, grpc.status.INTERNAL);
    assert.equal(internal.details, 'internal error: oops');
    assert.ok(
      logLines.some((l) => l.includes('"rpc internal error"') && l.includes('TypeError: oops')),
      'the stack is logged',
    );
    assert.equal(state.inflight, 0);
  });

  it('turns the deadline into an aborted signal with DeadlineExceeded', async () => {
    const h: Record<string, Handler> = {};
    state.ready();
    let seen: unknown;
    let deadline: Date | undefined;
    h.StopContainer = (_req, ctx) =>
      new Promise((_res, rej) => {
        deadline = ctx.deadline;
        ctx.signal.addEventListener('abort', () => {
          seen = ctx.signal.reason;
          rej(new Error('interrupted step'));
        });
      });
    const t0 = Date.now();
    const c = await serve(h);
    const e = await grpcError(c.runtime.StopContainer({ container_id: 'x' }, { deadline: t0 + 200 }));
    assert.equal(e.code, grpc.status.DEADLINE_EXCEEDED);
    assert.ok(deadline instanceof Date && Math.abs(deadline.getTime() - (t0 + 200)) < 50);
    await until(async () => seen);
    assert.ok(seen instanceof BerthError && seen.kind === 'DeadlineExceeded', 'the handler saw the deadline');
    assert.equal(state.inflight, 0);
  });

  it('aborts the signal when the caller cancels', async () => {
    const h: Record<string, Handler> = {};
    state.ready();
    let aborted: Promise<unknown> | undefined;
    h.StopPodSandbox = (_req, ctx) => {
      aborted = new Promise((res) => ctx.signal.addEventListener('abort', () => res(ctx.signal.reason)));
      return new Promise(() => {});
    };
    const c = await serve(h);
    const call = c.runtime.raw.StopPodSandbox({ pod_sandbox_id: 'p' }, () => {});
    await until(async () => (aborted ? true : undefined));
    call.cancel();
    const reason = await aborted!;
    assert.ok(reason instanceof BerthError && reason.kind === 'Cancelled');
  });

  it('gives a handler that reads its signal only late one already aborted, when the deadline passed meanwhile', async () => {
    const h: Record<string, Handler> = {};
    state.ready();
    let seen: unknown;
    h.StopContainer = async (_req, ctx) => {
      await new Promise((r) => setTimeout(r, 300));
      seen = ctx.signal.aborted ? ctx.signal.reason : 'not aborted';
      return {};
    };
    const c = await serve(h);
    const e = await grpcError(c.runtime.StopContainer({ container_id: 'x' }, { deadline: Date.now() + 100 }));
    assert.equal(e.code, grpc.status.DEADLINE_EXCEEDED);
    await until(async () => seen);
    assert.ok(seen instanceof BerthError && seen.kind === 'DeadlineExceeded', `the handler saw ${String(seen)}`);
    await until(async () => (state.inflight === 0 ? true : undefined));
  });

  it('gives a signal first read after the answer went nothing that can abort it (no listener, no timer left behind)', async () => {
    const h: Record<string, Handler> = {};
    state.ready();
    let kept: { signal: AbortSignal } | undefined;
    h.StopContainer = async (_req, ctx) => {
      kept = ctx;
      return {};
    };
    const c = await serve(h);
    await c.runtime.StopContainer({ container_id: 'x' }, { deadline: Date.now() + 100 });
    await until(async () => (state.inflight === 0 ? true : undefined));
    const late = kept!.signal;
    await new Promise((r) => setTimeout(r, 250));
    assert.equal(late.aborted, false);
  });

  it('encodes a kept answer once and sends the same bytes again; other answers are encoded each time', async () => {
    const def = criApi().runtime.v1.RuntimeService.service;
    let encodes = 0;
    const counting = {
      ...def,
      ListContainers: {
        ...def.ListContainers,
        responseSerialize: (v: unknown) => {
          encodes++;
          return def.ListContainers.responseSerialize(v as never);
        },
      },
    };
    const kept = keptAnswer({ containers: [{ id: 'c1', pod_sandbox_id: 'p1', state: 'CONTAINER_RUNNING', labels: { a: 'b' } }] });
    let keep = true;
    const c = await serve(
      {
        ListContainers: async () => (keep ? kept : { containers: [{ id: 'c2' }] }),
      },
      [],
      undefined,
      counting,
    );
    state.ready();
    for (let i = 0; i < 3; i++) {
      const r = await c.runtime.ListContainers({});
      assert.deepEqual(
        r.containers.map((x) => [x.id, x.pod_sandbox_id, x.state, x.labels]),
        [['c1', 'p1', 'CONTAINER_RUNNING', { a: 'b' }]],
      );
    }
    assert.equal(encodes, 1);
    assert.ok(Object.isFrozen(kept));
    keep = false;
    for (let i = 0; i < 2; i++)
      assert.deepEqual(
        (await c.runtime.ListContainers({})).containers.map((x) => x.id),
        ['c2'],
      );
    assert.equal(encodes, 3);
  });

  it('encodes the kept part of a keptAnswerWith answer once, and its own fields at each call: the bytes are those of the whole answer', async () => {
    const def = criApi().runtime.v1.RuntimeService.service;
    const md = def.PodSandboxStatus;
    const encoded: Buffer[] = [];
    const counting = {
      ...def,
      PodSandboxStatus: {
        ...md,
        responseSerialize: (v: unknown) => {
          const b = md.responseSerialize(v as never);
          encoded.push(b);
          return b;
        },
      },
    };
    const status = {
      id: 'p1',
      metadata: { name: 'n', uid: 'u', namespace: 'ns', attempt: 2 },
      state: 'SANDBOX_READY',
      created_at: '1733580000000000001',
      network: { ip: '10.0.0.2', additional_ips: [{ ip: 'fd00::2' }] },
      linux: { namespaces: { options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD', target_id: '' } } },
      labels: { a: 'b' },
      annotations: { c: 'd' },
      runtime_handler: 'runc',
    };
    const kept = keptAnswer<Record<string, unknown>>({ status, info: {}, containers_statuses: [] });
    let stamp = 1733580000000000000n;
    const c = await serve(
      {
        PodSandboxStatus: async () => keptAnswerWith(kept, { timestamp: String(++stamp) }),
      },
      [],
      undefined,
      counting,
    );
    state.ready();
    const got: string[] = [];
    for (let i = 0; i < 2; i++) {
      const r: { status?: unknown; timestamp: string } = await c.runtime.PodSandboxStatus({ pod_sandbox_id: 'p1' });
      assert.deepEqual(r.status, { ...status, linux: { namespaces: { options: { ...status.linux.namespaces.options, userns_options: null } } } });
      got.push(r.timestamp);
    }
    // The bytes on the wire, byte for byte those of the whole answer encoded at once.
    const raw = new grpc.Client(`unix://${join(dir, 's.sock')}`, grpc.credentials.createInsecure());
    const bytes = await new Promise<Buffer>((resolve, reject) =>
      raw.makeUnaryRequest(
        '/runtime.v1.RuntimeService/PodSandboxStatus',
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.alloc(0),
        (err, res) => (err ? reject(err) : resolve(res!)),
      ),
    );
    raw.close();
    assert.equal(Buffer.compare(bytes, md.responseSerialize({ status, info: {}, containers_statuses: [], timestamp: '1733580000000000003' } as never)), 0);
    assert.deepEqual(got, ['1733580000000000001', '1733580000000000002']);
    // The status once, then only each call's timestamp.
    const whole = encoded.length;
    assert.equal(whole, 4);
    assert.equal(encoded.filter((b) => b.length > 20).length, 1, 'the status is encoded once');
    assert.throws(() => keptAnswerWith<Record<string, unknown>>({ status }, { timestamp: '1' }), /must be a keptAnswer/);
  });

  it('answers INVALID_ARGUMENT to bytes that are not a message, and keeps serving', async () => {
    const h: Record<string, Handler> = {};
    state.ready();
    h.Version = async () => version;
    const c = await serve(h);
    const client = new grpc.Client(`unix://${join(dir, 's.sock')}`, grpc.credentials.createInsecure());
    const e = await new Promise<grpc.ServiceError>((resolve) =>
      client.makeUnaryRequest(
        '/runtime.v1.RuntimeService/Version',
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from([0xff, 0xff]), // a truncated varint tag
        (err) => resolve(err!),
      ),
    );
    client.close();
    assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
    assert.match(e.details, /^Version: malformed request: /);
    assert.equal((await c.runtime.Version({})).runtime_name, 'x');
  });

  it('drains: in-flight calls finish, new calls are refused', async () => {
    const h: Record<string, Handler> = {};
    state.ready();
    let release!: () => void;
    h.StopContainer = () => new Promise((res) => (release = () => res({})));
    h.Version = async () => version;
    const c = await serve(h);
    const slow = c.runtime.StopContainer({ container_id: 'x' });
    await until(async () => (state.inflight === 1 ? true : undefined));
    state.drain();
    let drained = false;
    const d = state.drained().then(() => (drained = true));
    const refused = await grpcError(c.runtime.Version({}));
    assert.equal(refused.code, grpc.status.UNAVAILABLE);
    assert.match(refused.details, /shutting down/);
    assert.equal(drained, false);
    release();
    assert.deepEqual(await slow, {});
    await d;
    assert.equal(drained, true);
  });

  it('writes one log line per call with method, duration and outcome', async () => {
    const h: Record<string, Handler> = {};
    state.ready();
    h.Version = async () => version;
    h.RemovePodSandbox = async () => {
      throw new BerthError('InvalidArgument', 'pod_sandbox_id is required');
    };
    const c = await serve(h);
    await c.runtime.Version({});
    await grpcError(c.runtime.RemovePodSandbox({}));
    const recs = logLines.map((l) => JSON.parse(l)).filter((r) => r.msg === 'rpc');
    assert.equal(recs.length, 2);
    assert.equal(recs[0].method, 'Version');
    assert.equal(recs[0].code, 'OK');
    assert.equal(typeof recs[0].duration_ms, 'number');
    assert.equal(recs[1].method, 'RemovePodSandbox');
    assert.equal(recs[1].code, 'INVALID_ARGUMENT');
    assert.equal(recs[1].error, 'pod_sandbox_id is required');
  });

  it('streams with back-pressure and ends the stream', async () => {
    const h: Record<string, Handler> = {};
    state.ready();
    h.GetContainerEvents = (async (_req: unknown, _ctx: unknown, send: (r: unknown) => Promise<void>) => {
      for (let i = 0; i < 3; i++) await send({ container_id: `c${i}`, container_event_type: 'CONTAINER_CREATED_EVENT' });
    }) as unknown as Handler;
    const got: string[] = [];
    const c = await serve(h);
    await new Promise<void>((resolve, reject) => {
      const s = c.runtime.raw.GetContainerEvents({});
      s.on('data', (d: { container_id: string }) => got.push(d.container_id));
      s.on('error', reject);
      s.on('end', resolve);
    });
    assert.deepEqual(got, ['c0', 'c1', 'c2']);
  });

  it('ends a stream cancelled while it waits for the client to read (send rejects)', async () => {
    const h: Record<string, Handler> = {};
    state.ready();
    let sent = 0;
    let waiting = false;
    let outcome: unknown;
    const big = 'x'.repeat(1024 * 1024);
    h.GetContainerEvents = (async (_req: unknown, _ctx: unknown, send: (r: unknown) => Promise<void>) => {
      try {
        for (;;) {
          waiting = true;
          await send({ container_id: big, container_event_type: 'CONTAINER_CREATED_EVENT' });
          waiting = false;
          sent++;
        }
      } catch (err) {
        outcome = err;
        throw err;
      }
    }) as unknown as Handler;
    const c = await serve(h);
    const s = c.runtime.raw.GetContainerEvents({});
    s.pause(); // a client that reads nothing: the server's writes stop draining
    s.on('error', () => undefined);
    await until(async () => (waiting && sent >= 1 ? true : undefined));
    s.cancel();
    await until(async () => (state.inflight === 0 ? true : undefined));
    assert.ok(outcome instanceof BerthError && outcome.kind === 'Cancelled', String(outcome));
  });

  it('tells every observer of each call, refused ones too, and runs the handler in their scope', async () => {
    const scope = new AsyncLocalStorage<string>();
    const seen: string[] = [];
    const observer = (name: string): RpcObserver => ({
      begin: (method, metadata, streaming) => {
        seen.push(`${name} begin ${method} ${String(metadata.get('traceparent')[0] ?? '-')} ${streaming}`);
        return {
          run: (fn) => scope.run(`${scope.getStore() ?? ''}${name}`, fn),
          end: (code, details) => void seen.push(`${name} end ${method} ${code} ${details ?? ''}`),
        };
      },
    });
    const h: Record<string, Handler> = {};
    h.Version = async () => ({ ...version, runtime_name: scope.getStore() ?? 'none' });
    h.RemovePodSandbox = async () => {
      throw new BerthError('NotFound', 'pod "x" not found');
    };
    const c = await serve(h, [observer('a'), observer('b')]);
    assert.equal((await grpcError(c.runtime.Version({}))).code, grpc.status.UNAVAILABLE, 'refused while recovering, and still observed');
    state.ready();
    const md = new grpc.Metadata();
    md.set('traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    assert.equal(
      (await new Promise<{ runtime_name: string }>((res, rej) => c.runtime.raw.Version({}, md, (e, r) => (e || !r ? rej(e) : res(r))))).runtime_name,
      'ab',
      'the handler ran inside both scopes, outermost first',
    );
    await grpcError(c.runtime.RemovePodSandbox({ pod_sandbox_id: 'x' }));
    assert.deepEqual(seen, [
      'a begin Version - false',
      'b begin Version - false',
      `a end Version ${grpc.status.UNAVAILABLE} berthd is recovering its state after start-up; retry shortly`,
      `b end Version ${grpc.status.UNAVAILABLE} berthd is recovering its state after start-up; retry shortly`,
      'a begin Version 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 false',
      'b begin Version 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 false',
      'a end Version 0 ',
      'b end Version 0 ',
      'a begin RemovePodSandbox - false',
      'b begin RemovePodSandbox - false',
      `a end RemovePodSandbox ${grpc.status.NOT_FOUND} pod "x" not found`,
      `b end RemovePodSandbox ${grpc.status.NOT_FOUND} pod "x" not found`,
    ]);
  });
});
