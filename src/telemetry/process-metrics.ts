/**
 * berthd's own process: resident memory, V8 heap, time spent in garbage collection by
 * kind, and event-loop delay. The delay is sampled by a timer of berth's own every
 * {@link PROBE_MS} (late by as much as the loop was blocked) rather than by
 * `monitorEventLoopDelay`, whose 10 ms timer would wake an idle daemon 100 times a second.
 */
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { Collected, Counter, Histogram, type Family } from './exposition.js';

const PROBE_MS = 500;
const DELAY_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

const GC_KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};

export class ProcessMetrics {
  readonly gc = new Counter('berth_process_gc_seconds_total', 'Time berthd spent in garbage collection, per kind.', ['kind']);
  readonly loopDelay = new Histogram('berth_event_loop_delay_seconds', "How late berthd's event loop ran a timer (blocked time).", [], DELAY_BUCKETS);
  readonly families: Family[];
  private readonly observer: PerformanceObserver;
  private timer: NodeJS.Timeout | undefined;

  constructor() {
    this.families = [
      new Collected('berth_process_resident_memory_bytes', "berthd's resident set size.", 'gauge', [], () => [[{}, process.memoryUsage.rss()]]),
      new Collected('berth_process_heap_bytes', "berthd's V8 heap: used and total.", 'gauge', ['kind'], () => {
        const m = process.memoryUsage();
        return [
          [{ kind: 'used' }, m.heapUsed],
          [{ kind: 'total' }, m.heapTotal],
          [{ kind: 'external' }, m.external],
        ];
      }),
      this.gc,
      this.loopDelay,
    ];
    this.observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        const kind = GC_KINDS[((e as { detail?: unknown }).detail as { kind?: number } | undefined)?.kind ?? -1] ?? 'other';
        this.gc.inc({ kind }, e.duration / 1000);
      }
    });
    this.observer.observe({ entryTypes: ['gc'] });
    this.probe();
  }

  private probe(): void {
    const due = performance.now() + PROBE_MS;
    this.timer = setTimeout(() => {
      this.loopDelay.observe({}, Math.max(0, performance.now() - due) / 1000);
      this.probe();
    }, PROBE_MS);
    this.timer.unref();
  }

  close(): void {
    this.observer.disconnect();
    clearTimeout(this.timer);
  }
}
