#!/usr/bin/env node
// Generates TypeScript types for the CRI v1 API (proto/runtime/v1/api.proto) into
// src/cri/gen/, with the same loader options src/cri/proto.ts uses at run time.
// The generator writes extension-less relative imports; NodeNext ESM needs ".js".
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const out = 'src/cri/gen';
rmSync(out, { recursive: true, force: true });
execFileSync(
  'node_modules/.bin/proto-loader-gen-types',
  ['--keepCase', '--longs=String', '--enums=String', '--defaults', '--oneofs', '--grpcLib=@grpc/grpc-js', `--outDir=${out}`, 'proto/runtime/v1/api.proto'],
  { stdio: ['ignore', 'ignore', 'inherit'] },
);

function patch(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) {
      patch(p);
      continue;
    }
    const src = readFileSync(p, 'utf8');
    writeFileSync(p, src.replace(/from '(\.{1,2}\/[^']+)'/g, "from '$1.js'"));
  }
}
patch(out);
