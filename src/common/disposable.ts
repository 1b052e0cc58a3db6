/**
 * A stack of undo steps, in the spirit of the TC39 `AsyncDisposableStack` that Node 20
 * lacks. A multi-step operation defers the undo of each step as it succeeds; on failure
 * `dispose()` runs them in reverse order; on success `move()` hands them to the owner
 * (or they are simply dropped). Every undo runs even if an earlier one throws; the
 * errors are collected and rethrown together.
 */
export type Undo = () => void | Promise<void>;

export class DisposableStack {
  private undos: Undo[] = [];
  private disposed = false;

  /** Registers `undo` to run when the stack is disposed. */
  defer(undo: Undo): void {
    if (this.disposed) throw new Error('DisposableStack already disposed');
    this.undos.push(undo);
  }

  /** Moves every pending undo into a new stack and leaves this one empty. */
  move(): DisposableStack {
    const next = new DisposableStack();
    next.undos = this.undos;
    this.undos = [];
    return next;
  }

  /** Runs the undo steps, newest first. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const errors: unknown[] = [];
    for (const undo of this.undos.reverse()) {
      try {
        await undo();
      } catch (err) {
        errors.push(err);
      }
    }
    this.undos = [];
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `${errors.length} cleanup steps failed`);
  }
}
