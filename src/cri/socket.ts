/**
 * berthd's CRI socket: claiming its path (a stale socket removed, a live one or another
 * file refused) and binding the gRPC server to it root-only.
 */
import * as grpc from '@grpc/grpc-js';
import { chmodSync, lstatSync, mkdirSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import { BerthError, errnoOf } from '../common/errors.js';

/**
 * Makes the socket path free for this daemon: a live socket means another server is
 * there (refuse); a dead one is stale and is removed; anything else is not ours.
 */
export async function claimSocketPath(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) {
    throw new BerthError('FailedPrecondition', `${path} exists and is not a socket; remove it or choose another --socket`);
  }
  const live = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (live) {
    throw new BerthError('FailedPrecondition', `another server is listening on ${path}; stop it first or choose another --socket`);
  }
  rmSync(path, { force: true });
}

/** Binds the gRPC server to the unix socket, created root-only (0660). */
export async function bindSocket(server: grpc.Server, path: string): Promise<void> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o711 });
  // The socket gets its mode at creation from the umask: never world-accessible.
  const previous = process.umask(0o117);
  try {
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${path}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
  } finally {
    process.umask(previous);
  }
  chmodSync(path, 0o660);
}
