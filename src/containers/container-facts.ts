/**
 * A container's facts (container-repository.ts stores them): decided from the checked
 * request when the row is written, completed from the OCI spec once it is made (the user
 * the process runs as, the stop signal), and read by everything after instead of the
 * request.
 */
import { CONTAINER_FACTS_VERSION, type ContainerFacts } from './container-repository.js';
import { criSignalNumber, effectiveStopSignal } from './signals.js';
import { ANNOTATION_STOP_SIGNAL, type CriContainerConfig } from './spec.js';

/** The request's ImageSpec besides the reference (kept for ContainerStatus.image). */
export interface RequestedImageSpec {
  annotations: Record<string, string>;
  userSpecifiedImage: string;
  runtimeHandler: string;
}

/** The facts of a new container, before its spec exists (user and stop signal: null). */
export function containerFacts(config: CriContainerConfig, image: RequestedImageSpec): ContainerFacts {
  const sc = config.linux?.security_context;
  return {
    v: CONTAINER_FACTS_VERSION,
    labels: config.labels,
    annotations: config.annotations,
    image,
    tty: config.tty,
    stdin: config.stdin,
    stdinOnce: config.stdin_once,
    resources: config.linux?.resources ?? null,
    mounts: config.mounts,
    privileged: sc?.privileged ?? false,
    selinuxOptions: sc?.selinux_options ?? null,
    user: null,
    stopSignal: null,
  };
}

interface SpecUser {
  uid?: number;
  gid?: number;
  additionalGids?: number[];
}

/** What the OCI spec decided: the process's user and the stop signal (its annotation); null for what it lacks. */
export function specFacts(spec: Record<string, unknown>): Pick<ContainerFacts, 'user' | 'stopSignal'> {
  const u = (spec.process as { user?: SpecUser } | undefined)?.user;
  const stop = (spec.annotations as Record<string, string> | undefined)?.[ANNOTATION_STOP_SIGNAL];
  return {
    user: u ? { uid: u.uid ?? 0, gid: u.gid ?? 0, supplementalGroups: u.additionalGids ?? [] } : null,
    stopSignal: stop ?? null,
  };
}

/**
 * The signal StopContainer sends first: the one decided at creation; when that is
 * unknown or has no CRI name, the image's (or SIGTERM) as it would have been decided.
 * `imageStopSignal` gives the image's STOPSIGNAL (undefined when the image is gone); it
 * is asked only then.
 */
export function stopSignalOf(facts: ContainerFacts, imageStopSignal: () => string | undefined): { signal: number; warning?: string } {
  const n = facts.stopSignal === null ? undefined : criSignalNumber(facts.stopSignal);
  if (n !== undefined) return { signal: n };
  const s = imageStopSignal();
  return effectiveStopSignal({}, s === undefined ? undefined : { run: { stopSignal: s } });
}
