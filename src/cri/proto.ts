/**
 * The CRI v1 API, loaded from proto/runtime/v1/api.proto at run time with the same
 * conversions the generated types in ./gen were made with (hack/gen-proto-types.mjs):
 * snake_case field names as in the proto, int64 as decimal strings (nanosecond
 * timestamps do not fit a double), enums as their names, defaults filled in.
 *
 * The two services' definitions are built here from protobufjs's reflection, as
 * proto-loader would build them, less what berth never reads: proto-loader also makes,
 * for every one of the file's ~250 messages and enums, a descriptor object and the
 * file's encoded descriptors (for gRPC server reflection), and loads protobufjs's
 * descriptor extension and the well-known types to do so. Those stayed on the heap for
 * the daemon's life: 2–3 MiB of an idle berthd's RSS.
 */
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { fileURLToPath } from 'node:url';
import type { ProtoGrpcType } from './gen/api.js';

export const PROTO_FILE = fileURLToPath(new URL('../../../proto/runtime/v1/api.proto', import.meta.url));

/** How a decoded message becomes the plain object handlers see (what the generated `__Output` types describe). */
const CONVERSION: protobuf.IConversionOptions = { longs: String, enums: String, defaults: true, oneofs: true };

/** The part of the generated package type berth uses: the two services. */
export interface CriApi {
  runtime: { v1: Pick<ProtoGrpcType['runtime']['v1'], 'RuntimeService' | 'ImageService'> };
}

function serializer(type: protobuf.Type): (value: object) => Buffer {
  return (value) => {
    if (Array.isArray(value)) throw new Error(`cannot serialize an array as ${type.name}`);
    return type.encode(type.fromObject(value)).finish() as Buffer;
  };
}

function deserializer(type: protobuf.Type): (bytes: Buffer) => object {
  return (bytes) => type.toObject(type.decode(bytes), CONVERSION);
}

/** A grpc-js service definition (the form `grpc.loadPackageDefinition` takes) for one service of the file. */
function serviceDefinition(root: protobuf.Root, fullName: string): grpc.ServiceDefinition {
  const service = root.lookupService(fullName);
  const def: Record<string, grpc.MethodDefinition<object, object>> = {};
  for (const m of service.methodsArray) {
    // resolveAll() has run: both types are set.
    const req = m.resolvedRequestType!;
    const res = m.resolvedResponseType!;
    def[m.name] = {
      path: `/${fullName}/${m.name}`,
      requestStream: m.requestStream === true,
      responseStream: m.responseStream === true,
      requestSerialize: serializer(req),
      requestDeserialize: deserializer(req),
      responseSerialize: serializer(res),
      responseDeserialize: deserializer(res),
      // A client gets each method under this name too (grpc-js), as proto-loader names it.
      originalName: m.name.charAt(0).toLowerCase() + m.name.slice(1),
    };
  }
  return def;
}

let root: protobuf.Root | undefined;
let api: CriApi | undefined;

/** The parsed file, every type resolved, field names as in the proto (parsed once per process). */
export function criRoot(): protobuf.Root {
  if (!root) {
    root = new protobuf.Root().loadSync(PROTO_FILE, { keepCase: true });
    root.resolveAll();
  }
  return root;
}

/** The loaded API (built once per process). */
export function criApi(): CriApi {
  if (!api) {
    const root = criRoot();
    const pkg = {
      'runtime.v1.RuntimeService': serviceDefinition(root, 'runtime.v1.RuntimeService'),
      'runtime.v1.ImageService': serviceDefinition(root, 'runtime.v1.ImageService'),
    };
    api = grpc.loadPackageDefinition(pkg) as unknown as CriApi;
  }
  return api;
}
