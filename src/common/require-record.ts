/**
 * The one preamble of every operation on a pod or a container named by the caller: find
 * it by id or prefix, treat one still being created as absent, and refuse it in a state
 * the operation cannot take, naming that state.
 */
import { BerthError } from './errors.js';

export interface RequireStateOptions<S extends string> {
  /** The states the operation accepts; absent: any state. */
  states?: readonly S[];
  /**
   * What follows "<what> <id> is <state>" in the refusal; default ", not <states>"
   * (e.g. ", not running").
   */
  refusal?: string;
  /** States reported as absent (NotFound), beside `creating`. */
  hidden?: readonly S[];
}

/**
 * `rec` (found for `idOrPrefix`) when it exists, is not `creating` or `hidden`, and is in
 * one of `states`. NotFound (`<what> "<idOrPrefix>" not found`) otherwise when absent,
 * FailedPrecondition naming its state when in another.
 */
export function requireState<R extends { id: string; state: string }>(
  what: string,
  idOrPrefix: string,
  rec: R | undefined,
  opts: RequireStateOptions<R['state']> = {},
): R {
  if (!rec || rec.state === 'creating' || opts.hidden?.includes(rec.state)) throw new BerthError('NotFound', `${what} "${idOrPrefix}" not found`);
  if (opts.states && !opts.states.includes(rec.state)) {
    throw new BerthError('FailedPrecondition', `${what} ${rec.id} is ${rec.state}${opts.refusal ?? `, not ${opts.states.join(' or ')}`}`);
  }
  return rec;
}
