/**
 * V8 heap settings for berthd, applied when this module is evaluated: main.ts imports
 * it first, so they hold before the gRPC stack and the CRI proto are loaded.
 *
 * V8's young generation starts at two 1 MiB semi-spaces and doubles them, up to 16 MiB
 * each, whenever many objects survive a scavenge: loading the proto and the first RPCs
 * grow it to ~10 MiB of resident memory that an idle daemon keeps. berthd's traffic is
 * small requests (its large data, layer bytes, lives in Buffers outside the heap), so
 * the semi-spaces stay at their initial size: measured here, idle RSS 81–84 MiB before,
 * 72–76 MiB after. This is `--max-semi-space-size=1` without needing node flags on the
 * command line (bin/berthd.js is run through its shebang, by systemd, or by `node`);
 * `--max-semi-space-size` itself is read once when the heap is set up, too early for a
 * script, but the growth factor is read at each scavenge. bin/berthd.js also passes
 * `--max-semi-space-size=1` in its shebang: over a churn of 100 pods the growth factor
 * alone did not hold the young generation (it reached 30 MiB).
 */
import { setFlagsFromString } from 'node:v8';

setFlagsFromString('--semi-space-growth-factor=1');

// The old generation's next major GC comes when it reaches (1 + heap-growing-percent/100)
// x what the last one left live. V8 picks that factor itself (up to 4x) when left at 0,
// and under a churn it let the heap reach 2-3x the ~20 MB live: a 5-minute churn of 8 pods
// measured heap total up to 63 MB and RSS up to 128 MiB (soak: 151 MiB). With 25 % the
// same churn stayed at 33 MB and 97 MiB, for ~5 % more daemon CPU per pod (a major GC
// of 20 MB every few seconds).
setFlagsFromString('--heap-growing-percent=25');
