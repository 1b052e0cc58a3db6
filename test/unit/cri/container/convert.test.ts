import assert from 'node:assert/strict';
import { specFacts } from '../../../../src/containers/container-facts.js';
import { mergeResources } from '../../../../src/containers/container-io.js';
import type { ContainerFacts, ContainerRecord } from '../../../../src/containers/container-repository.js';
import { containerImageRef, toCriContainer, toSpecResources, verboseInfo } from '../../../../src/cri/container/convert.js';
import type { LinuxContainerResources__Output } from '../../../../src/cri/gen/runtime/v1/LinuxContainerResources.js';
import { containerFactsV1 } from '../../../../src/store/typed-records-v6.js';

/** A record as created from `config` (its facts derived as migration 6 derives them). */
function record(config: Record<string, unknown>): ContainerRecord {
  return {
    id: 'c'.repeat(64),
    sandboxId: 'p'.repeat(64),
    name: 'web',
    attempt: 2,
    imageId: 'sha256:' + 'a'.repeat(64),
    imageRef: 'sha256:' + 'a'.repeat(64),
    state: 'running',
    facts: containerFactsV1(config) as unknown as ContainerFacts,
    request: config,
    logPath: '/var/log/pods/x/web/2.log',
    pid: 4321,
    shimPid: 4300,
    exitCode: null,
    reason: '',
    message: '',
    createdAt: '1',
    startedAt: '2',
    finishedAt: '0',
  };
}

/** Decoded LinuxContainerResources as grpc-js hands them over: every field, int64 as strings. */
function resources(r: Partial<LinuxContainerResources__Output>): LinuxContainerResources__Output {
  return {
    cpu_period: '0',
    cpu_quota: '0',
    cpu_shares: '0',
    memory_limit_in_bytes: '0',
    oom_score_adj: '0',
    cpuset_cpus: '',
    cpuset_mems: '',
    hugepage_limits: [],
    unified: {},
    memory_swap_limit_in_bytes: '0',
    ...r,
  } as LinuxContainerResources__Output;
}

describe('cri/container/convert', () => {
  it('ImageSpec: image as the user named it (user_specified_image kept), else the reference created with, else a tag for a bare ID', () => {
    const id = 'sha256:' + 'a'.repeat(64);
    const c = toCriContainer(record({ image: { image: id, user_specified_image: 'nginx:1.25', annotations: { a: 'b' }, runtime_handler: '' } }));
    assert.deepEqual(c.image, { image: 'nginx:1.25', annotations: { a: 'b' }, user_specified_image: 'nginx:1.25', runtime_handler: '' });
    assert.deepEqual(toCriContainer(record({})).image, { image: id, annotations: {}, user_specified_image: '', runtime_handler: '' });
    const names = { tags: ['docker.io/library/nginx:1.25'], digests: [] };
    assert.equal(toCriContainer(record({}), names).image!.image, 'docker.io/library/nginx:1.25');
    assert.equal(toCriContainer({ ...record({}), imageRef: 'nginx:latest' }, names).image!.image, 'nginx:latest');
  });

  it('image_ref: the repo digest of the repository the container named, else the first, else the image ID', () => {
    const id = 'sha256:' + 'a'.repeat(64);
    const m = 'sha256:' + 'b'.repeat(64);
    const names = { tags: [], digests: [`docker.io/library/nginx@${m}`, `mirror.example:5000/web/nginx@${m}`] };
    const byUser = record({ image: { image: id, user_specified_image: 'mirror.example:5000/web/nginx:1.25' } });
    assert.equal(containerImageRef(byUser, names), `mirror.example:5000/web/nginx@${m}`);
    assert.equal(toCriContainer(byUser, names).image_ref, `mirror.example:5000/web/nginx@${m}`);
    assert.equal(toCriContainer(byUser, names).image_id, id, 'image_id stays the image ID');
    assert.equal(containerImageRef({ ...record({}), imageRef: 'nginx' }, names), `docker.io/library/nginx@${m}`, 'normalised before matching');
    assert.equal(containerImageRef(record({}), names), `docker.io/library/nginx@${m}`, 'created by ID: the first');
    assert.equal(containerImageRef(record({}), { tags: ['local/x:1'], digests: [] }), id, 'a loaded image without a repo digest');
    assert.equal(containerImageRef(record({}), undefined), id, 'the image is gone');
  });

  it('mergeResources: fields the update sets replace the recorded ones; zero fields (crictl’s unset flags) keep them', () => {
    const created = toSpecResources(resources({ memory_limit_in_bytes: '268435456', cpu_shares: '256', oom_score_adj: '100' }));
    const afterCpu = mergeResources(created, toSpecResources(resources({ cpu_quota: '50000', cpu_period: '100000' })));
    assert.equal(afterCpu.memory_limit_in_bytes, 268435456);
    assert.equal(afterCpu.cpu_shares, 256);
    assert.equal(afterCpu.cpu_quota, 50000);
    assert.equal(afterCpu.cpu_period, 100000);
    assert.equal(afterCpu.oom_score_adj, 100, 'not applied by an update, so not recorded as changed');
    const afterMem = mergeResources(afterCpu, toSpecResources(resources({ memory_limit_in_bytes: '134217728', cpuset_cpus: '0' })));
    assert.equal(afterMem.memory_limit_in_bytes, 134217728);
    assert.equal(afterMem.memory_swap_limit_in_bytes, 0);
    assert.equal(afterMem.cpu_quota, 50000);
    assert.equal(afterMem.cpuset_cpus, '0');
    assert.equal(mergeResources(afterMem, toSpecResources(resources({ cpu_quota: '-1' }))).cpu_quota, -1, '-1 (no limit) is a value, not "unset"');
    assert.deepEqual(mergeResources(null, toSpecResources(resources({ cpu_shares: '2' }))), toSpecResources(resources({ cpu_shares: '2' })));
  });

  it('specFacts: process.user and the stop-signal annotation of the OCI spec', () => {
    assert.deepEqual(
      specFacts({ process: { user: { uid: 1000, gid: 1000, additionalGids: [1000, 3000] } }, annotations: { 'io.berth.stop-signal': 'SIGNAL_SIGQUIT' } }),
      { user: { uid: 1000, gid: 1000, supplementalGroups: [1000, 3000] }, stopSignal: 'SIGNAL_SIGQUIT' },
    );
    assert.deepEqual(specFacts({ process: { user: {} } }), { user: { uid: 0, gid: 0, supplementalGroups: [] }, stopSignal: null });
    assert.deepEqual(specFacts({}), { user: null, stopSignal: null });
  });

  it('verboseInfo: containerd/CRI-O keys (sandboxID, pid, privileged, config, runtimeSpec), env values as text', () => {
    const cfg = { envs: [{ key: 'A', value: JSON.parse(JSON.stringify(Buffer.from('b=c'))) as unknown }], linux: { security_context: { privileged: true } } };
    const spec = { ociVersion: '1.0.2', process: { args: ['sleep', '1'] } };
    const info = verboseInfo(record(cfg), spec);
    assert.equal(info.sandboxID, 'p'.repeat(64));
    assert.equal(info.pid, 4321);
    assert.equal(info.shimPid, 4300);
    assert.equal(info.privileged, true);
    assert.deepEqual(info.runtimeSpec, spec);
    assert.deepEqual((info.config as { envs: unknown[] }).envs, [{ key: 'A', value: 'b=c' }]);
    const bare = verboseInfo({ ...record({}), pid: null }, undefined);
    assert.equal(bare.pid, 0);
    assert.equal(bare.privileged, false);
    assert.ok(!('runtimeSpec' in bare));
  });
});
