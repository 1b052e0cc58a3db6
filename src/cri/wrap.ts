/**
 * The one wrapper around every RPC of both services. For each call it:
 * 1. refuses malformed protobuf with INVALID_ARGUMENT (the decoder never throws into grpc-js);
 * 2. refuses with UNAVAILABLE while berthd recovers or drains (ServingState);
 * 3. turns the caller's deadline and cancellation into an AbortSignal for the handler;
 * 4. maps whatever the handler threw to a gRPC status (errors.ts, the only mapper);
 * 5. writes one structured log line: method, duration, outcome;
 * 6. tells the observers (metrics, tracing) of the call's begin and end, every call
 *    counted, refused ones too, and runs the handler inside each observer's scope (a
 *    trace context, say) so that what the handler does is attributed to the call.
 * RPCs without a handler answer UNIMPLEMENTED, naming the RPC.
 */
import * as grpc from '@grpc/grpc-js';
import { BerthError, messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { codeName, toRpcStatus, type RpcStatus } from './errors.js';
import type { RpcContext, StreamHandler, UnaryHandler } from './rpc.js';
import type { ServingState } from './serving-state.js';

/** What the tolerant decoder returns for bytes that are not a valid message. */
class MalformedRequest {
  constructor(readonly reason: string) {}
}

/** One call as an observer sees it; `end` is called exactly once. */
export interface RpcObservation {
  /** Runs the handler within the observer's scope (e.g. the call's span as the active context). */
  run<T>(fn: () => T): T;
  /** The call's outcome: its gRPC status code (0 OK) and, on failure, the details. */
  end(code: grpc.status, details?: string): void;
}

/** Watches every RPC: metrics count and time them, tracing gives each a span. */
export interface RpcObserver {
  /**
   * A call arrived (before it is admitted); `streaming` for server-streaming RPCs, `path`
   * the full method name (`/runtime.v1.RuntimeService/RunPodSandbox`).
   */
  begin(method: string, metadata: grpc.Metadata, streaming: boolean, path: string): RpcObservation;
}

export interface WrapEnv {
  state: ServingState;
  log: Logger;
  /** Metrics and tracing; none by default. */
  observers?: readonly RpcObserver[];
  /**
   * Resolves once what was committed so far is on disk (the store's WalSync): a unary
   * call that may change state answers only after it, so an acknowledged change survives
   * a power cut. Read-only calls (status, list, stats) do not wait for it.
   */
  durable?: () => Promise<void>;
}

/** The observations of one call, as one. */
function observe(env: WrapEnv, method: string, call: Pick<grpc.ServerUnaryCall<unknown, unknown>, 'metadata' | 'getPath'>, streaming: boolean): RpcObservation {
  if (env.observers === undefined || env.observers.length === 0) return NO_OBSERVATION;
  if (env.observers.length === 1) return env.observers[0]!.begin(method, call.metadata, streaming, call.getPath());
  const all = env.observers.map((o) => o.begin(method, call.metadata, streaming, call.getPath()));
  return {
    run: <T>(fn: () => T): T => all.reduceRight<() => T>((inner, o) => () => o.run(inner), fn)(),
    end: (code, details) => {
      for (const o of all) o.end(code, details);
    },
  };
}

const NO_OBSERVATION: RpcObservation = { run: (fn) => fn(), end: () => undefined };

// Calls kubelet makes every few seconds to observe state; their successes log at debug.
// None of them commits anything, so none waits for the WAL's fdatasync either: what they
// report is committed (a later change's answer waits for the sync), and under a churn a
// PLEG relist of every pod and container would otherwise queue behind the other calls'
// syncs on the libuv pool.
const READ_ONLY = /^(Version|Status|RuntimeConfig|List.*|Stream.*|.*Status|.*Stats|ImageFsInfo|GetContainerEvents)$/;

type AnyUnary = UnaryHandler<unknown, unknown>;
type AnyStream = StreamHandler<unknown, unknown>;

/**
 * The handler's context. Its AbortSignal, the deadline's timer and the cancellation
 * listener are made when the handler first reads `ctx.signal`: most calls (status, list,
 * version: kubelet's PLEG makes hundreds a second) never do, and an AbortController with
 * a timer and a listener was a fair part of what such a call cost. Read late, the signal
 * is already aborted when the deadline passed or the caller cancelled meanwhile.
 */
function makeContext(
  env: WrapEnv,
  method: string,
  call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>,
): { ctx: RpcContext; done(): void } {
  const raw = call.getDeadline();
  const ms = raw instanceof Date ? raw.getTime() : raw;
  const deadline = Number.isFinite(ms) ? new Date(ms) : undefined;
  let ac: AbortController | undefined;
  let timer: NodeJS.Timeout | undefined;
  const expired = (): BerthError => new BerthError('DeadlineExceeded', `${method}: the caller's deadline passed`);
  // grpc-js cancels the call itself when the deadline passes, sometimes before our timer.
  const onCancel = (): void =>
    ac?.abort(deadline !== undefined && Date.now() >= deadline.getTime() - 5 ? expired() : new BerthError('Cancelled', `${method}: cancelled by the caller`));
  let finished = false;
  const signal = (): AbortSignal => {
    if (ac !== undefined) return ac.signal;
    const own = (ac = new AbortController());
    // Read after the answer went: nothing is attached, and nothing can abort it any more.
    if (finished) return own.signal;
    if (call.cancelled) onCancel();
    else call.on('cancelled', onCancel);
    if (deadline !== undefined && !own.signal.aborted) {
      const left = deadline.getTime() - Date.now();
      if (left <= 0) own.abort(expired());
      else (timer = setTimeout(() => own.abort(expired()), Math.min(left, 2 ** 31 - 1))).unref();
    }
    return own.signal;
  };
  return {
    ctx: {
      method,
      get signal() {
        return signal();
      },
      deadline,
      draining: env.state.draining,
    },
    done() {
      finished = true;
      if (ac === undefined) return;
      if (timer) clearTimeout(timer);
      call.removeListener('cancelled', onCancel);
    },
  };
}

/**
 * One log line per call. `refused` marks calls turned away before a handler ran (while
 * recovering or draining, or unimplemented): those log at debug, as kubelet retries them
 * by the hundred; a handler's own failure logs at info, or error when internal.
 */
function logOutcome(env: WrapEnv, method: string, start: bigint, st: RpcStatus | undefined, refused = false): void {
  if (st === undefined) {
    const level = READ_ONLY.test(method) ? 'debug' : 'info';
    if (env.log.enabled(level)) env.log[level]('rpc', { method, duration_ms: Number(process.hrtime.bigint() - start) / 1e6, code: 'OK' });
    return;
  }
  const duration_ms = Number(process.hrtime.bigint() - start) / 1e6;
  const fields = { method, duration_ms, code: codeName(st.code), error: st.details };
  if (st.code === grpc.status.INTERNAL || st.code === grpc.status.UNKNOWN) env.log.error('rpc', fields);
  else if (refused) env.log.debug('rpc', fields);
  else env.log.info('rpc', fields);
}

/**
 * Decides whether a call runs. Returns the status to answer with when it does not;
 * when it returns undefined the call holds a ServingState slot it must `leave()`.
 */
function admit(env: WrapEnv, method: string, request: unknown, implemented: boolean): RpcStatus | undefined {
  if (request instanceof MalformedRequest) {
    return { code: grpc.status.INVALID_ARGUMENT, details: `${method}: malformed request: ${request.reason}` };
  }
  if (!implemented) {
    return { code: grpc.status.UNIMPLEMENTED, details: `${method} is not implemented by berth yet` };
  }
  const refusal = env.state.enter();
  if (refusal !== undefined) return { code: grpc.status.UNAVAILABLE, details: refusal };
  return undefined;
}

function wrapUnary(env: WrapEnv, method: string, handler: AnyUnary | undefined): grpc.handleUnaryCall<unknown, unknown> {
  const readOnly = READ_ONLY.test(method);
  return (call, callback) => {
    const start = process.hrtime.bigint();
    const obs = observe(env, method, call, false);
    const refused = admit(env, method, call.request, handler !== undefined);
    if (refused) {
      logOutcome(env, method, start, refused, true);
      obs.end(refused.code, refused.details);
      callback({ code: refused.code, details: refused.details });
      return;
    }
    const { ctx, done } = makeContext(env, method, call);
    const durable = readOnly ? undefined : env.durable;
    // One async function and one then: each promise more is work on every call (more so
    // with async hooks on, which the timeline's AsyncLocalStorage turns on).
    obs
      .run(async () => {
        const res = await handler!(call.request, ctx);
        if (durable !== undefined) await durable();
        return res;
      })
      .then(
        (res) => {
          try {
            logOutcome(env, method, start, undefined);
            obs.end(grpc.status.OK);
            callback(null, res);
          } finally {
            done();
            env.state.leave();
          }
        },
        (err: unknown) => {
          try {
            const st = toRpcStatus(err, ctx.signal);
            if (st.code === grpc.status.INTERNAL && err instanceof Error && err.stack) {
              env.log.error('rpc internal error', { method, stack: err.stack });
            }
            logOutcome(env, method, start, st);
            obs.end(st.code, st.details);
            callback({ code: st.code, details: st.details });
          } finally {
            done();
            env.state.leave();
          }
        },
      );
  };
}

function wrapStream(env: WrapEnv, method: string, handler: AnyStream | undefined): grpc.handleServerStreamingCall<unknown, unknown> {
  return (call) => {
    const start = process.hrtime.bigint();
    const obs = observe(env, method, call, true);
    const refused = admit(env, method, call.request, handler !== undefined);
    if (refused) {
      logOutcome(env, method, start, refused, true);
      obs.end(refused.code, refused.details);
      call.emit('error', { code: refused.code, details: refused.details });
      return;
    }
    const { ctx, done } = makeContext(env, method, call);
    // Headers go out on admission: a client learns that its stream stands (a GetContainerEvents
    // subscription is made as the handler starts, before any other call is read) before the first message.
    call.sendMetadata(new grpc.Metadata());
    // Honour back-pressure: wait for 'drain' when the socket buffer is full; a call
    // cancelled meanwhile never drains, so the wait ends with the cancellation.
    const send = (res: unknown): Promise<void> =>
      new Promise((resolve, reject) => {
        if (ctx.signal.aborted) {
          reject(ctx.signal.reason);
          return;
        }
        if (call.write(res)) return resolve();
        const settle = (): void => {
          call.off('drain', settle);
          ctx.signal.removeEventListener('abort', settle);
          if (ctx.signal.aborted) reject(ctx.signal.reason);
          else resolve();
        };
        call.once('drain', settle);
        ctx.signal.addEventListener('abort', settle, { once: true });
      });
    obs
      .run(() => Promise.resolve().then(() => handler!(call.request, ctx, send)))
      .then(
        () => {
          logOutcome(env, method, start, undefined);
          obs.end(grpc.status.OK);
          call.end();
        },
        (err: unknown) => {
          const st = toRpcStatus(err, ctx.signal);
          logOutcome(env, method, start, st);
          obs.end(st.code, st.details);
          if (!call.cancelled) call.emit('error', { code: st.code, details: st.details });
        },
      )
      .finally(() => {
        done();
        env.state.leave();
      });
  };
}

const KEPT = new WeakSet<object>();

/**
 * Marks a response that its handler keeps and answers with again while what it reports
 * is unchanged (a ContainerStatus: kubelet's PLEG asks for every container every second):
 * it is encoded once, and the encoding is kept with it. The response is frozen; the
 * objects inside it must not change either.
 */
export function keptAnswer<T extends object>(res: T): T {
  KEPT.add(Object.freeze(res));
  return res;
}

/** Answers made of a kept part and fields of their own (see keptAnswerWith). */
const KEPT_WITH = new WeakMap<object, { kept: object; own: object }>();

/**
 * An answer made of a kept one (see {@link keptAnswer}) and a few fields of its own that
 * change at every call (a PodSandboxStatus's timestamp): the kept part is encoded once,
 * only `own` at each call. A protobuf message may be encoded in parts, the encoding of
 * some fields followed by that of the others; so `own` must hold only fields the kept
 * part leaves unset, and its fields must come after the kept part's in the message (their
 * numbers higher), for the bytes to be those of the whole answer encoded at once.
 */
export function keptAnswerWith<T extends object>(kept: T, own: Partial<T>): T {
  if (!KEPT.has(kept)) throw new Error('keptAnswerWith: the kept part must be a keptAnswer');
  const res = { ...kept, ...own };
  KEPT_WITH.set(res, { kept, own });
  return res;
}

/** Whether two lists hold the same objects in the same order (a kept list answer still holds). */
export function sameItems(a: readonly unknown[], b: readonly unknown[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Builds a grpc-js service definition and implementation from a loaded service
 * definition and berth's handler table. Every method of the definition is present.
 */
export function wrapService(
  env: WrapEnv,
  definition: grpc.ServiceDefinition,
  handlers: Record<string, AnyUnary | AnyStream | undefined>,
): { definition: grpc.ServiceDefinition; implementation: grpc.UntypedServiceImplementation } {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const impl: grpc.UntypedServiceImplementation = {};
  for (const [name, md] of Object.entries(definition) as Array<[string, grpc.MethodDefinition<unknown, unknown>]>) {
    if (md.requestStream) throw new Error(`${name}: client-streaming RPCs are not part of CRI v1`);
    const decode = md.requestDeserialize;
    const encode = md.responseSerialize;
    // The bytes of each kept answer (see keptAnswer); grpc-js copies them into each call's
    // frame, so they are never written to.
    const encoded = new WeakMap<object, Buffer>();
    const keptBytes = (res: object): Buffer => {
      let bytes = encoded.get(res);
      if (bytes === undefined) encoded.set(res, (bytes = encode(res)));
      return bytes;
    };
    def[name] = {
      ...md,
      requestDeserialize: (buf: Buffer) => {
        try {
          return decode(buf);
        } catch (err) {
          return new MalformedRequest(messageOf(err));
        }
      },
      responseSerialize: (res: unknown) => {
        if (typeof res !== 'object' || res === null) return encode(res);
        const parts = KEPT_WITH.get(res);
        if (parts !== undefined) return Buffer.concat([keptBytes(parts.kept), encode(parts.own)]);
        return KEPT.has(res) ? keptBytes(res) : encode(res);
      },
    };
    const handler = handlers[name];
    impl[name] = md.responseStream ? wrapStream(env, name, handler as AnyStream | undefined) : wrapUnary(env, name, handler as AnyUnary | undefined);
  }
  return { definition: def, implementation: impl };
}
