/**
 * The kubelet contract (src/cri/contract.ts): every field of the pod and container
 * configuration messages, walked from the proto's own descriptors, has a decision; and
 * every `refused` decision is a real refusal naming the field.
 */
import assert from 'node:assert/strict';
import protobuf from 'protobufjs';
import { CONTRACT, CONTRACT_ROOTS } from '../../../src/cri/contract.js';
import { criRoot } from '../../../src/cri/proto.js';
import { refuseUnsupportedContainerFields } from '../../../src/cri/refusals.js';
import type { ContainerConfig__Output } from '../../../src/cri/gen/runtime/v1/ContainerConfig.js';

const root = criRoot();
const type = (name: string): protobuf.Type => root.lookupType(`runtime.v1.${name}`);

/** Every `Message.field` reachable from the roots, not descending below an `ignored` field. */
function reachableFields(): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  const walk = (t: protobuf.Type): void => {
    if (seen.has(t.name)) return;
    seen.add(t.name);
    for (const f of t.fieldsArray) {
      const key = `${t.name}.${f.name}`;
      out.push(key);
      if (f.resolvedType instanceof protobuf.Type && !CONTRACT[key]?.startsWith('ignored:')) walk(f.resolvedType);
    }
  };
  for (const r of CONTRACT_ROOTS) walk(type(r));
  return out;
}

/** A decoded message as grpc-js hands it to handlers (keepCase, defaults filled, enums as names). */
function decoded<T>(name: string, value: Record<string, unknown>): T {
  const t = type(name);
  return t.toObject(t.fromObject(value), { longs: String, enums: String, defaults: true, arrays: true, objects: true, oneofs: true }) as T;
}

describe('kubelet contract', () => {
  it('every field of the pod and container configs has a decision', () => {
    const missing = reachableFields().filter((k) => CONTRACT[k] === undefined);
    assert.deepEqual(missing, [], `fields without a decision in src/cri/contract.ts: ${missing.join(', ')}`);
  });

  it('every decision names a field of the proto, with a reason', () => {
    const fields = new Set(reachableFields());
    for (const [k, v] of Object.entries(CONTRACT)) {
      assert.ok(fields.has(k), `${k} is not a field reachable from ${CONTRACT_ROOTS.join(', ')}`);
      assert.match(v, /^(applied|refused|ignored): \S/, k);
    }
  });

  const container = (c: Record<string, unknown>): ContainerConfig__Output =>
    decoded<ContainerConfig__Output>('ContainerConfig', { metadata: { name: 'c' }, image: { image: 'busybox' }, ...c });
  it('lets image volumes (Mount.image, image_sub_path) through to the container service', () => {
    assert.ok(CONTRACT['Mount.image']?.startsWith('applied:'));
    assert.ok(CONTRACT['Mount.image_sub_path']?.startsWith('applied:'));
    refuseUnsupportedContainerFields(container({ mounts: [{ container_path: '/a', image: { image: 'busybox' }, image_sub_path: 'bin' }] }), false);
  });

  it('passes what kubelet sends by default: zero values, host user namespace, selinux_relabel without SELinux', () => {
    refuseUnsupportedContainerFields(container({}), false);
    refuseUnsupportedContainerFields(
      container({
        mounts: [{ container_path: '/a', host_path: '/b', selinux_relabel: true }],
        linux: { security_context: { namespace_options: { userns_options: { mode: 'NODE' } } } },
      }),
      false,
    );
    assert.throws(
      () => refuseUnsupportedContainerFields(container({ mounts: [{ container_path: '/a', host_path: '/b', selinux_relabel: true }] }), true),
      /selinux_relabel/,
    );
  });

  it('lets a container follow its pod into a user namespace, and recursive read-only and idmapped mounts through', () => {
    refuseUnsupportedContainerFields(
      container({
        linux: { security_context: { namespace_options: { userns_options: { mode: 'POD', uids: [{ host_id: 100000, container_id: 0, length: 65536 }] } } } },
        mounts: [
          { container_path: '/a', host_path: '/b', readonly: true, recursive_read_only: true },
          { container_path: '/c', host_path: '/d', uidMappings: [{ host_id: 1, container_id: 0, length: 1 }] },
        ],
      }),
      false,
    );
  });
});
