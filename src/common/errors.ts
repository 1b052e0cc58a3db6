/**
 * Error kinds of the berth domain. Modules throw {@link BerthError} with a kind and a
 * message a person can act on; `src/cri/errors.ts` is the one place that turns kinds
 * into gRPC status codes. Anything thrown that is not a BerthError is a bug and is
 * reported as INTERNAL.
 */
export type ErrorKind =
  | 'InvalidArgument'
  | 'NotFound'
  | 'AlreadyExists'
  | 'FailedPrecondition'
  | 'Unavailable'
  | 'DeadlineExceeded'
  | 'Cancelled'
  | 'ResourceExhausted'
  | 'DataLoss'
  | 'PermissionDenied'
  | 'Unauthenticated'
  | 'Unimplemented'
  | 'Internal';

export class BerthError extends Error {
  readonly kind: ErrorKind;

  constructor(kind: ErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BerthError';
    this.kind = kind;
  }
}

export const invalidArgument = (msg: string): BerthError => new BerthError('InvalidArgument', msg);
export const failedPrecondition = (msg: string): BerthError => new BerthError('FailedPrecondition', msg);

/** True for a BerthError of the given kind (or any BerthError when no kind is given). */
export function isKind(err: unknown, kind?: ErrorKind): err is BerthError {
  return err instanceof BerthError && (kind === undefined || err.kind === kind);
}

/** The message of anything thrown, for logs and wrapped errors. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Text from outside (a registry's answer, a layer's file name) in a message: at most
 * `max` characters, marked with how many were cut.
 */
export const CLIP_CHARS = 200;
export function clip(s: string, max = CLIP_CHARS): string {
  return s.length <= max ? s : `${s.slice(0, max)}... (${s.length - max} more characters)`;
}

/** The errno code (ENOENT, EEXIST…) of a Node system error, if it is one. */
export function errnoOf(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') {
    return err.code;
  }
  return undefined;
}
