#!/usr/bin/env node
// Checks the import graph of the TypeScript sources (src/**/*.ts), type-only imports and
// re-exports included, against the module chain of README.md's "Architecture in brief"
// and ../shared/DESIGN.md ("Modules and their direction"):
//
//   common ← config, store, telemetry, oci ← images, shim ← sandbox ← containers ← streaming, stats ← cri, doctor ← cli ← main.ts
//
// A module may import itself and the layers below it only: not a layer above, nor a
// different module of its own layer. It also fails on any import cycle between files.
// Needs no build: the imports are read from the sources with TypeScript's own scanner.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';

const root = resolve('src');

// Lower number = lower layer.
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
  doctor: 6,
  cli: 7,
  'main.ts': 8,
};

let failed = false;
const fail = (msg) => {
  failed = true;
  console.error(msg);
};

function walk(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (p.endsWith('.ts') && !p.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

const rel = (file) => relative(root, file);

function moduleOf(file) {
  const first = rel(file).split('/')[0];
  if (!(first in LAYER)) {
    fail(`src/${rel(file)}: not in a known module (add it to hack/check-imports.mjs, README.md and DESIGN.md)`);
    return undefined;
  }
  return first;
}

/** The source file a relative specifier names: './x.js' is './x.ts' (NodeNext resolution). */
function resolveSpec(from, spec) {
  const base = resolve(dirname(from), spec);
  for (const candidate of [base.replace(/\.js$/, '.ts'), base.replace(/\.js$/, '.d.ts'), base, join(base, 'index.ts')]) {
    if (existsSync(candidate) && statSync(candidate).isFile()) return candidate;
  }
  return undefined;
}

const files = walk(root);
/** file → the files it imports (value and type imports, re-exports, dynamic imports). */
const graph = new Map();

for (const file of files) {
  const from = moduleOf(file);
  const deps = [];
  graph.set(file, deps);
  const { importedFiles } = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
  for (const { fileName: spec } of importedFiles) {
    if (!spec.startsWith('.')) continue;
    const target = resolveSpec(file, spec);
    if (target === undefined) {
      fail(`src/${rel(file)}: imports ${spec}, which names no source file`);
      continue;
    }
    if (relative(root, target).startsWith('..')) {
      fail(`src/${rel(file)}: imports ${spec}, outside src/`);
      continue;
    }
    if (target.endsWith('.ts') && !target.endsWith('.d.ts')) deps.push(target);
    const to = moduleOf(target);
    if (from === undefined || to === undefined || to === from) continue;
    if (LAYER[to] > LAYER[from]) {
      fail(`src/${rel(file)}: '${from}' may not import '${to}' (${spec}): imports point down the chain only`);
    } else if (LAYER[to] === LAYER[from]) {
      fail(`src/${rel(file)}: '${from}' may not import '${to}' (${spec}): they are on the same layer`);
    }
  }
}

// Cycles: Tarjan's strongly connected components; each component of more than one file
// (or a file importing itself) holds at least one cycle, printed as one path through it.
let index = 0;
const stack = [];
const state = new Map();
const components = [];
function strongConnect(v) {
  const s = { index, low: index, onStack: true };
  index++;
  state.set(v, s);
  stack.push(v);
  for (const w of graph.get(v) ?? []) {
    const t = state.get(w);
    if (t === undefined) {
      strongConnect(w);
      s.low = Math.min(s.low, state.get(w).low);
    } else if (t.onStack) {
      s.low = Math.min(s.low, t.index);
    }
  }
  if (s.low === s.index) {
    const comp = [];
    let w;
    do {
      w = stack.pop();
      state.get(w).onStack = false;
      comp.push(w);
    } while (w !== v);
    if (comp.length > 1 || (graph.get(v) ?? []).includes(v)) components.push(comp);
  }
}
for (const file of files) if (!state.has(file)) strongConnect(file);

/** One cycle inside a strongly connected component, from its first file back to it. */
function cycleIn(comp) {
  const inComp = new Set(comp);
  const start = comp[0];
  const prev = new Map([[start, undefined]]);
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift();
    for (const w of graph.get(v) ?? []) {
      if (!inComp.has(w)) continue;
      if (w === start) {
        const path = [v];
        for (let p = prev.get(v); p !== undefined; p = prev.get(p)) path.unshift(p);
        return [...path, start];
      }
      if (!prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
    }
  }
  return comp;
}

if (components.length > 0) {
  fail(`import cycles (${components.length}):`);
  for (const comp of components) console.error('  ' + cycleIn(comp).map(rel).join(' -> '));
}

if (failed) process.exit(1);
console.log(`imports ok: ${files.length} source files, no cycles, layers respected (type imports included)`);
