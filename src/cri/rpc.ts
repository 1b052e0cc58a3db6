/**
 * Types for berth's CRI handlers. A handler is a plain async function of the decoded
 * request and an {@link RpcContext}; the wrapper in wrap.ts turns it into a grpc-js
 * handler. Handler tables are checked against the generated service types, so a
 * handler with the wrong request or response type does not compile.
 */
import type * as grpc from '@grpc/grpc-js';

export interface RpcContext {
  /** The RPC's name, e.g. "RunPodSandbox". */
  readonly method: string;
  /** Aborted when the caller cancels or the call's deadline passes; reason is a BerthError. */
  readonly signal: AbortSignal;
  /** The caller's deadline, if it set one. */
  readonly deadline: Date | undefined;
  /** Aborted when berthd starts draining (SIGTERM): a stream that would run on ends then. */
  readonly draining: AbortSignal;
}

export type UnaryHandler<Req, Res> = (req: Req, ctx: RpcContext) => Promise<Res>;

/** A server-streaming handler writes responses with `send`; it resolves when the stream ends. */
export type StreamHandler<Req, Res> = (req: Req, ctx: RpcContext, send: (res: Res) => Promise<void>) => Promise<void>;

/** Drops the index signature that the generated handler interfaces inherit. */
type KnownKeys<S> = keyof { [K in keyof S as string extends K ? never : K]: S[K] };

/** The handlers of a generated service interface, each optional (missing = UNIMPLEMENTED). */
export type ServiceHandlers<S> = {
  [K in KnownKeys<S>]?: S[K] extends (call: grpc.ServerWritableStream<infer Req, infer Res>) => void
    ? StreamHandler<Req, Res>
    : S[K] extends grpc.handleUnaryCall<infer Req, infer Res>
      ? UnaryHandler<Req, Res>
      : never;
};

/** Items per message of the streaming list RPCs: bounded so no message nears the 16 MiB cap. */
const STREAM_PAGE = 500;

/** Sends `items` in pages, each wrapped into a response by `wrap`. */
export async function sendPaged<T, Res>(items: T[], send: (res: Res) => Promise<void>, wrap: (page: T[]) => Res): Promise<void> {
  for (let i = 0; i < items.length; i += STREAM_PAGE) await send(wrap(items.slice(i, i + STREAM_PAGE)));
}
