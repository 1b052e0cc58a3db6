/**
 * A typed, promise-based CRI client over the real gRPC transport, for tests and the
 * benchmark. Method names and request/response types come from the generated types.
 */
import * as grpc from '@grpc/grpc-js';
import { MAX_MESSAGE_BYTES } from '../../src/cri/server.js';
import type { ImageServiceClient } from '../../src/cri/gen/runtime/v1/ImageService.js';
import type { RuntimeServiceClient } from '../../src/cri/gen/runtime/v1/RuntimeService.js';
import { criApi } from '../../src/cri/proto.js';

/** Unary method names of a generated client, with their request and response types. */
type UnaryMethods<C> = {
  // Inference reads the last overload, which is (argument, callback).
  [K in keyof C as K extends string ? (K extends Capitalize<K> ? K : never) : never]: C[K] extends {
    (argument: infer Req, callback: grpc.requestCallback<infer Res>): grpc.ClientUnaryCall;
  }
    ? (req: Req, opts?: grpc.CallOptions) => Promise<Res>
    : never;
};

export type PromiseClient<C> = UnaryMethods<C> & { raw: C };

function promisify<C extends grpc.Client>(client: C): PromiseClient<C> {
  return new Proxy({ raw: client } as PromiseClient<C>, {
    get(target, prop) {
      if (prop === 'raw') return target.raw;
      const fn = (client as unknown as Record<string, unknown>)[prop as string];
      if (typeof fn !== 'function') return undefined;
      return (req: unknown, opts: grpc.CallOptions = {}) =>
        new Promise((resolve, reject) => {
          (fn as (...a: unknown[]) => void).call(client, req, new grpc.Metadata(), opts, (err: grpc.ServiceError | null, res: unknown) =>
            err ? reject(err) : resolve(res),
          );
        });
    },
  });
}

export interface CriClients {
  runtime: PromiseClient<RuntimeServiceClient>;
  image: PromiseClient<ImageServiceClient>;
  close(): void;
}

export function criClients(socket: string): CriClients {
  const api = criApi().runtime.v1;
  const target = `unix://${socket}`;
  const opts = { 'grpc.max_receive_message_length': MAX_MESSAGE_BYTES, 'grpc.max_send_message_length': MAX_MESSAGE_BYTES };
  const runtime = new api.RuntimeService(target, grpc.credentials.createInsecure(), opts);
  const image = new api.ImageService(target, grpc.credentials.createInsecure(), opts);
  return {
    runtime: promisify(runtime),
    image: promisify(image),
    close() {
      runtime.close();
      image.close();
    },
  };
}

/** Asserts a promise rejects with a gRPC status; returns the error. */
export async function grpcError(p: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    if (typeof (err as grpc.ServiceError).code === 'number') return err as grpc.ServiceError;
    throw err;
  }
  throw new Error('expected the call to fail with a gRPC status, but it succeeded');
}
