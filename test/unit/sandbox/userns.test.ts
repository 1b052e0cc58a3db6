/** Pure checks of pod user namespaces (sandbox/userns.ts) and the mounts berthd prepares (containers/idmap.ts). */
import assert from 'node:assert/strict';
import { BerthError } from '../../../src/common/errors.js';
import { planMounts } from '../../../src/containers/idmap.js';
import type { CriMount } from '../../../src/containers/mounts.js';
import { checkIdMappings, hostIdOf, podUsernsFrom } from '../../../src/sandbox/userns.js';

const invalid = (re: RegExp) => (err: unknown) => err instanceof BerthError && err.kind === 'InvalidArgument' && re.test(err.message);
const modes = { network: 'POD', pid: 'CONTAINER', ipc: 'POD' };
const KUBELET = [{ host_id: 65536 * 3, container_id: 0, length: 65536 }];

describe('sandbox/userns: pod user namespace options', () => {
  it("takes kubelet's one mapping of 65536 ids, and several contiguous ones, in container order", () => {
    assert.deepEqual(podUsernsFrom({ mode: 'POD', uids: KUBELET, gids: KUBELET }, modes, 'f'), {
      uids: [{ containerId: 0, hostId: 196608, size: 65536 }],
      gids: [{ containerId: 0, hostId: 196608, size: 65536 }],
    });
    const two = checkIdMappings(
      [
        { host_id: 500000, container_id: 1000, length: 64536 },
        { host_id: 400000, container_id: 0, length: 1000 },
      ],
      'f',
    );
    assert.deepEqual(
      two.map((m) => m.containerId),
      [0, 1000],
    );
    assert.equal(hostIdOf(two, 0), 400000);
    assert.equal(hostIdOf(two, 1001), 500001);
    assert.equal(hostIdOf(two, 65536), undefined);
  });

  it('is the host user namespace for NODE or no options; refuses mappings with NODE, other modes, and host namespaces', () => {
    assert.equal(podUsernsFrom(undefined, modes, 'f'), undefined);
    assert.equal(podUsernsFrom({ mode: 'NODE' }, modes, 'f'), undefined);
    assert.throws(() => podUsernsFrom({ mode: 'NODE', uids: KUBELET }, modes, 'f'), invalid(/^f: mappings are given but mode is NODE/));
    assert.throws(() => podUsernsFrom({ mode: 'CONTAINER', uids: KUBELET, gids: KUBELET }, modes, 'f'), invalid(/f\.mode CONTAINER/));
    assert.throws(() => podUsernsFrom({ mode: 'POD', uids: KUBELET, gids: KUBELET }, { ...modes, network: 'NODE' }, 'f'), invalid(/host's network/));
    assert.throws(() => podUsernsFrom({ mode: 'POD', uids: KUBELET, gids: [] }, modes, 'f'), invalid(/^f\.gids: .*none given/));
  });

  it('refuses overlapping, gapped, short, rootless and out-of-range mappings, naming the field', () => {
    const cases: Array<[Parameters<typeof checkIdMappings>[0], RegExp]> = [
      [
        [
          { host_id: 100000, container_id: 0, length: 65536 },
          { host_id: 100005, container_id: 65536, length: 5 },
        ],
        /u\[0\] and u\[1\]: the host ranges overlap/,
      ],
      [
        [
          { host_id: 100000, container_id: 0, length: 65536 },
          { host_id: 300000, container_id: 10, length: 5 },
        ],
        /the container ranges overlap/,
      ],
      [
        [
          { host_id: 100000, container_id: 0, length: 60000 },
          { host_id: 300000, container_id: 60001, length: 6000 },
        ],
        /not contiguous \(ids 60000 to 60000/,
      ],
      [[{ host_id: 100000, container_id: 0, length: 100 }], /100 ids mapped/],
      [[{ host_id: 100000, container_id: 5, length: 65536 }], /container id 0 is not mapped/],
      [[{ host_id: 4294967000, container_id: 0, length: 65536 }], /runs past the last id/],
      [[{ host_id: 1, container_id: 0, length: 0 }], /u\[0\]\.length is 0/],
    ];
    for (const [list, re] of cases) assert.throws(() => checkIdMappings(list, 'u'), invalid(re), re.source);
  });
});

describe('containers/idmap: planning prepared mounts', () => {
  const m = (over: Partial<CriMount>): CriMount => ({
    container_path: '/m',
    host_path: '/srv',
    readonly: false,
    selinux_relabel: false,
    propagation: 'PROPAGATION_PRIVATE',
    ...over,
  });
  const pod = { usernsPath: '/run/x/user', uids: [{ containerId: 0, hostId: 196608, size: 65536 }], gids: [{ containerId: 0, hostId: 196608, size: 65536 }] };

  it('prepares recursive read-only mounts and mounts with mappings, and nothing else', () => {
    assert.deepEqual(planMounts([m({}), m({ readonly: true })], undefined), []);
    const plans = planMounts([m({}), m({ readonly: true, recursive_read_only: true }), m({ uidMappings: KUBELET, gidMappings: KUBELET })], pod);
    assert.deepEqual(
      plans.map((p) => [p.index, p.recursiveReadOnly, p.idmap?.pod]),
      [
        [1, true, undefined],
        [2, false, true],
      ],
    );
    const other = [{ host_id: 7_000_000, container_id: 0, length: 65536 }];
    assert.equal(planMounts([m({ uidMappings: other, gidMappings: other })], pod)[0]!.idmap?.pod, false);
  });

  it('refuses recursive_read_only without readonly or with non-private propagation, and mappings without a pod user namespace', () => {
    assert.throws(() => planMounts([m({ recursive_read_only: true })], undefined), invalid(/mounts\[0\]\.recursive_read_only needs readonly/));
    assert.throws(
      () => planMounts([m({ readonly: true, recursive_read_only: true, propagation: 'PROPAGATION_BIDIRECTIONAL' })], undefined),
      invalid(/needs propagation PROPAGATION_PRIVATE/),
    );
    assert.throws(
      () => planMounts([m({ uidMappings: KUBELET, gidMappings: KUBELET })], undefined),
      invalid(/mounts\[0\]\.uidMappings\/gidMappings: the pod has no user namespace/),
    );
    assert.throws(() => planMounts([m({ uidMappings: KUBELET })], pod), invalid(/mounts\[0\]\.gidMappings: both/));
  });
});
