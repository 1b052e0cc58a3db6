/**
 * The CRI v1 API, loaded from proto/runtime/v1/api.proto at run time with the same
 * options the generated types in ./gen were made with (hack/gen-proto-types.mjs):
 * snake_case field names as in the proto, int64 as decimal strings (nanosecond
 * timestamps do not fit a double), enums as their names, defaults filled in.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';
import type { ProtoGrpcType } from './gen/api.js';

export const PROTO_FILE = fileURLToPath(new URL('../../../proto/runtime/v1/api.proto', import.meta.url));

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

let api: ProtoGrpcType | undefined;

/** The loaded API (parsed once per process). */
export function criApi(): ProtoGrpcType {
  api ??= grpc.loadPackageDefinition(protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS)) as unknown as ProtoGrpcType;
  return api;
}
