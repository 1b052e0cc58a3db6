/**
 * The OpenTelemetry context manager berth installs: OpenTelemetry's AsyncLocalStorage
 * manager, over a storage berth can reach. The trace points (common/trace-points.ts)
 * bind that storage to their channels (`bindStore`), so that while a step runs its span
 * is the active one and the steps it runs in turn (a layer's fetch inside a pull) become
 * its children. The storage of the stock manager is private, hence this subclass.
 */
import { ROOT_CONTEXT, type Context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { AsyncLocalStorage } from 'node:async_hooks';

export class StepContextManager extends AsyncLocalStorageContextManager {
  /** The active context of the current async execution. */
  readonly storage = new AsyncLocalStorage<Context>();

  override active(): Context {
    return this.storage.getStore() ?? ROOT_CONTEXT;
  }

  override with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(
    context: Context,
    fn: F,
    thisArg?: ThisParameterType<F>,
    ...args: A
  ): ReturnType<F> {
    const cb = thisArg == null ? fn : (fn.bind(thisArg) as F);
    return this.storage.run(context, cb, ...args);
  }

  override attach(context: Context): { dispose(): void } {
    const previous = this.active();
    this.storage.enterWith(context);
    let disposed = false;
    return {
      dispose: () => {
        if (disposed) return;
        disposed = true;
        this.storage.enterWith(previous);
      },
    };
  }

  override disable(): this {
    this.storage.disable();
    return this;
  }
}
