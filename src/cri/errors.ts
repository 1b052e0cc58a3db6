/**
 * The one place where berth's error kinds become gRPC status codes. Handlers and the
 * modules below them throw BerthError; they never build a gRPC status themselves.
 */
import { status } from '@grpc/grpc-js';
import { BerthError, messageOf, type ErrorKind } from '../common/errors.js';

const CODE: Record<ErrorKind, status> = {
  InvalidArgument: status.INVALID_ARGUMENT,
  NotFound: status.NOT_FOUND,
  AlreadyExists: status.ALREADY_EXISTS,
  FailedPrecondition: status.FAILED_PRECONDITION,
  Unavailable: status.UNAVAILABLE,
  DeadlineExceeded: status.DEADLINE_EXCEEDED,
  Cancelled: status.CANCELLED,
  ResourceExhausted: status.RESOURCE_EXHAUSTED,
  DataLoss: status.DATA_LOSS,
  PermissionDenied: status.PERMISSION_DENIED,
  Unauthenticated: status.UNAUTHENTICATED,
  Unimplemented: status.UNIMPLEMENTED,
  Internal: status.INTERNAL,
};

export interface RpcStatus {
  code: status;
  details: string;
}

/**
 * Maps anything a handler threw to a status. When the call was already cancelled or
 * timed out, the abort reason wins over whatever the interrupted step threw.
 */
export function toRpcStatus(err: unknown, signal?: AbortSignal): RpcStatus {
  if (signal?.aborted && signal.reason instanceof BerthError && !(err instanceof BerthError && err.kind !== 'Internal')) {
    return { code: CODE[signal.reason.kind], details: signal.reason.message };
  }
  if (err instanceof BerthError) return { code: CODE[err.kind], details: err.message };
  return { code: status.INTERNAL, details: `internal error: ${messageOf(err)}` };
}

/** The status code name, for logs and metrics (e.g. "NOT_FOUND"). */
export function codeName(code: status): string {
  return status[code] ?? String(code);
}
