#!/usr/bin/env node
// Fails on any import cycle in src/, and on any import that points up the module chain
// of ../shared/DESIGN.md ("Modules and their direction"). Runs on the compiled output
// (dist/src), so run `tsc` first.
import madge from 'madge';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const root = 'dist/src';

// Lower number = lower layer. A module may import itself and any lower layer only.
const LAYER = {
  common: 0,
  config: 1,
  store: 1,
  telemetry: 1,
  oci: 1,
  images: 2,
  shim: 2,
  sandbox: 3,
  containers: 4,
  streaming: 5,
  stats: 5,
  cri: 6,
  'main.js': 7,
};

let failed = false;

const res = await madge(root, { fileExtensions: ['js'] });
const cycles = res.circular();
if (cycles.length > 0) {
  failed = true;
  console.error(`import cycles (${cycles.length}):`);
  for (const c of cycles) console.error('  ' + [...c, c[0]].join(' -> '));
}

function moduleOf(file) {
  const first = relative(root, file).split('/')[0];
  if (!(first in LAYER)) {
    failed = true;
    console.error(`${file}: not in a known module (add it to hack/check-imports.mjs and DESIGN.md)`);
    return undefined;
  }
  return first;
}

function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (p.endsWith('.js')) checkFile(p);
  }
}

function checkFile(file) {
  const from = moduleOf(file);
  if (from === undefined) return;
  const src = readFileSync(file, 'utf8');
  for (const m of src.matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s*['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)/g)) {
    const spec = m[1] ?? m[2];
    const target = resolve(dirname(file), spec);
    const rel = relative(resolve(root), target);
    if (rel.startsWith('..')) {
      failed = true;
      console.error(`${file}: imports ${spec}, outside src/`);
      continue;
    }
    const to = moduleOf(join(root, rel));
    if (to === undefined || to === from) continue;
    if (LAYER[to] >= LAYER[from]) {
      failed = true;
      console.error(`${file}: module '${from}' may not import '${to}' (${spec}); imports point down the chain only`);
    }
  }
}

walk(root);
if (failed) process.exit(1);
console.log(`imports ok: no cycles among ${Object.keys(res.obj()).length} modules, layers respected`);
