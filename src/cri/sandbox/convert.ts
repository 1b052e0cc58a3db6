import { BerthError } from '../../common/errors.js';
import type { SandboxRecord } from '../../sandbox/sandbox-repository.js';
import type { SandboxService } from '../../sandbox/sandbox-service.js';
import { criState } from '../../sandbox/state.js';
import type { PodSandbox } from '../gen/runtime/v1/PodSandbox.js';
import type { PodSandboxFilter__Output } from '../gen/runtime/v1/PodSandboxFilter.js';

export function toCriPodSandbox(rec: SandboxRecord): PodSandbox {
  return {
    id: rec.id,
    metadata: { name: rec.metadata.name, uid: rec.metadata.uid, namespace: rec.metadata.namespace, attempt: rec.metadata.attempt },
    state: criState(rec.state),
    created_at: rec.createdAt,
    labels: rec.facts.labels,
    annotations: rec.facts.annotations,
    runtime_handler: rec.runtimeHandler,
  };
}

/** The PodSandbox message of each record (not changed once read, and handed out again until its row changes), made once. */
const listed = new WeakMap<SandboxRecord, PodSandbox>();

function keptCriPodSandbox(rec: SandboxRecord): PodSandbox {
  let pod = listed.get(rec);
  if (pod === undefined) listed.set(rec, (pod = toCriPodSandbox(rec)));
  return pod;
}

/** ListPodSandbox/StreamPodSandboxes filtering: id (or unique prefix), state, labels (all must match). */
export function filteredSandboxes(svc: SandboxService, filter: PodSandboxFilter__Output | null): PodSandbox[] {
  let recs = svc.list();
  if (filter?.id) {
    const one = svc.find(filter.id);
    recs = one && one.state !== 'creating' ? [one] : [];
  }
  const out = recs.map(keptCriPodSandbox);
  return out.filter(
    (p) => (!filter?.state || p.state === filter.state.state) && Object.entries(filter?.label_selector ?? {}).every(([k, v]) => p.labels?.[k] === v),
  );
}

export function requireId(id: string, field: string): string {
  if (id === '') throw new BerthError('InvalidArgument', `${field} is required`);
  if (id.length > 128) throw new BerthError('InvalidArgument', `${field} is ${id.length} characters long; a sandbox id has 64`);
  return id;
}
