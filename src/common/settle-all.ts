/**
 * Steps run side by side that must all be attempted: waits until every one has settled
 * (none is left running behind a failure), then throws the first failure, if any.
 */
export async function settleAll(steps: ReadonlyArray<Promise<unknown> | undefined>): Promise<void> {
  const outcomes = await Promise.allSettled(steps);
  const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
  if (failed) throw failed.reason;
}
