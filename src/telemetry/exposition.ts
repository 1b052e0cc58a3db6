/**
 * A small writer of the Prometheus text exposition format (version 0.0.4): counters,
 * gauges and histograms with labels, kept in memory and rendered on each scrape, plus
 * gauges computed at scrape time from callbacks.
 *
 * berth writes its own instead of loading prom-client: that package pulls in its cluster
 * aggregator, push gateway client and t-digest on import, about 10 MiB of RSS in a daemon
 * whose idle floor is ~65 MiB, for what is here under 200 lines.
 */

/** Label names to values; every series of a family has the family's label names. */
export type Labels = Readonly<Record<string, string>>;

/** Seconds buckets of Prometheus's client libraries (DefBuckets), as go-grpc-prometheus uses. */
export const DEFAULT_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** One metric family as it is written: `# HELP`, `# TYPE` and its samples. */
export interface Family {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'gauge' | 'histogram';
  /** Appends the family's sample lines (without HELP/TYPE) to `out`. */
  write(out: string[]): void;
}

/** Escapes a label value: backslash, double quote and newline. */
export function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Escapes HELP text: backslash and newline. */
function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

/** `{a="x",b="y"}` in the given name order, or '' when there are none. */
export function formatLabels(names: readonly string[], labels: Labels, extra?: [string, string]): string {
  const parts = names.map((n) => `${n}="${escapeLabel(labels[n] ?? '')}"`);
  if (extra) parts.push(`${extra[0]}="${escapeLabel(extra[1])}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

/** A sample value as Prometheus reads it: integers plainly, +Inf/-Inf/NaN by name. */
export function formatValue(v: number | bigint): string {
  if (typeof v === 'bigint') return v.toString();
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

function keyOf(names: readonly string[], labels: Labels): string {
  return names.map((n) => labels[n] ?? '').join('\u0000');
}

abstract class Series<V> implements Family {
  abstract readonly type: 'counter' | 'gauge' | 'histogram';
  protected readonly series = new Map<string, { labels: Labels; value: V }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[] = [],
  ) {}

  protected entry(labels: Labels, init: () => V): { labels: Labels; value: V } {
    const k = keyOf(this.labelNames, labels);
    let e = this.series.get(k);
    if (!e) this.series.set(k, (e = { labels, value: init() }));
    return e;
  }

  /** Drops one series (a pull that finished, say). */
  remove(labels: Labels): void {
    this.series.delete(keyOf(this.labelNames, labels));
  }

  abstract write(out: string[]): void;
}

/** A value that only goes up. */
export class Counter extends Series<number> {
  readonly type = 'counter';

  inc(labels: Labels = {}, by = 1): void {
    this.entry(labels, () => 0).value += by;
  }

  /** One series to count into without looking it up each time (a hot path's, made once). */
  bind(labels: Labels): (by?: number) => void {
    const e = this.entry(labels, () => 0);
    return (by = 1) => void (e.value += by);
  }

  /** The current value of one series (tests, Status). */
  get(labels: Labels = {}): number {
    return this.series.get(keyOf(this.labelNames, labels))?.value ?? 0;
  }

  write(out: string[]): void {
    for (const { labels, value } of this.series.values()) out.push(`${this.name}${formatLabels(this.labelNames, labels)} ${formatValue(value)}`);
  }
}

/** A value that goes up and down. */
export class Gauge extends Series<number> {
  readonly type = 'gauge';

  set(labels: Labels, v: number): void {
    this.entry(labels, () => 0).value = v;
  }

  inc(labels: Labels = {}, by = 1): void {
    this.entry(labels, () => 0).value += by;
  }

  write(out: string[]): void {
    for (const { labels, value } of this.series.values()) out.push(`${this.name}${formatLabels(this.labelNames, labels)} ${formatValue(value)}`);
  }
}

interface HistogramValue {
  counts: number[];
  sum: number;
  count: number;
}

/** Observations counted into cumulative buckets, with their sum and count. */
export class Histogram extends Series<HistogramValue> {
  readonly type = 'histogram';

  constructor(
    name: string,
    help: string,
    labelNames: readonly string[] = [],
    readonly buckets: readonly number[] = DEFAULT_BUCKETS,
  ) {
    super(name, help, labelNames);
  }

  observe(labels: Labels, v: number): void {
    this.bind(labels)(v);
  }

  /** One series to observe into without looking it up each time (a hot path's, made once). */
  bind(labels: Labels): (v: number) => void {
    const e = this.entry(labels, () => ({ counts: this.buckets.map(() => 0), sum: 0, count: 0 })).value;
    const buckets = this.buckets;
    return (v) => {
      for (let i = 0; i < buckets.length; i++) if (v <= buckets[i]!) e.counts[i]!++;
      e.sum += v;
      e.count++;
    };
  }

  write(out: string[]): void {
    for (const { labels, value } of this.series.values()) {
      this.buckets.forEach((b, i) => out.push(`${this.name}_bucket${formatLabels(this.labelNames, labels, ['le', formatValue(b)])} ${value.counts[i]}`));
      out.push(`${this.name}_bucket${formatLabels(this.labelNames, labels, ['le', '+Inf'])} ${value.count}`);
      out.push(`${this.name}_sum${formatLabels(this.labelNames, labels)} ${formatValue(value.sum)}`);
      out.push(`${this.name}_count${formatLabels(this.labelNames, labels)} ${value.count}`);
    }
  }
}

/** A family whose samples are computed when scraped (counts of pods by state, RSS…). */
export class Collected implements Family {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge',
    readonly labelNames: readonly string[],
    private readonly collect: () => Iterable<[Labels, number | bigint]>,
  ) {}

  write(out: string[]): void {
    for (const [labels, v] of this.collect()) out.push(`${this.name}${formatLabels(this.labelNames, labels)} ${formatValue(v)}`);
  }
}

/** Renders families in the text format; a family without samples writes only its HELP and TYPE. */
export function render(families: Iterable<Family>): string {
  const out: string[] = [];
  for (const f of families) {
    out.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
    f.write(out);
  }
  return out.join('\n') + '\n';
}

/** The Content-Type of the text format. */
export const TEXT_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
