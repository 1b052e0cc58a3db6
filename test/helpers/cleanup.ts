/**
 * Clean-up for e2e tests: the steps a test registered run in reverse order after it,
 * all of them even when some fail; then any failure fails the test's afterEach hook.
 * A leak Berthd.dispose() finds (a process, mount or file left behind) is a failure.
 */
export type CleanupStep = () => Promise<void> | void;

export async function runCleanup(steps: CleanupStep[]): Promise<void> {
  const errors: string[] = [];
  for (const f of steps.splice(0).reverse()) {
    try {
      await f();
    } catch (err) {
      errors.push(err instanceof Error ? err.message : String(err));
    }
  }
  if (errors.length > 0) throw new Error(`clean-up failed:\n${errors.join('\n')}`);
}
