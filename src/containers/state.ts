/**
 * The container state machine.
 *
 *              CreateContainer            StartContainer          exit / StopContainer
 *   (none) ──▶ creating ──▶ created ──────────────▶ running ─────────────────────▶ exited
 *                 │             │                                                      │
 *                 │             └── StopContainer (never started) ─────────────────────┤
 *                 └── failure: rolled back, row gone            RemoveContainer ─▶ removing ─▶ (row gone)
 *
 *   `unknown`: the shim died without recording an exit and the runtime no longer runs the
 *   container (found at recovery, or while following a container whose conmon was
 *   killed): reported, not forgotten, with reason `Unknown` and a message. StopContainer
 *   (and StopPodSandbox) makes it `exited` with exit code 255, as containerd does;
 *   RemoveContainer removes it directly.
 */
export type ContainerState = 'creating' | 'created' | 'running' | 'exited' | 'unknown' | 'removing';

const TRANSITIONS: Record<ContainerState, readonly ContainerState[]> = {
  creating: ['created', 'removing'],
  created: ['running', 'exited', 'unknown', 'removing'],
  running: ['exited', 'unknown', 'removing'],
  exited: ['removing'],
  unknown: ['exited', 'removing'],
  removing: ['removing'],
};

export function canTransition(from: ContainerState, to: ContainerState): boolean {
  return from === to || TRANSITIONS[from].includes(to);
}

/** CRI's ContainerState for a berth state. */
export function criContainerState(s: ContainerState): 'CONTAINER_CREATED' | 'CONTAINER_RUNNING' | 'CONTAINER_EXITED' | 'CONTAINER_UNKNOWN' {
  switch (s) {
    case 'created':
      return 'CONTAINER_CREATED';
    case 'running':
      return 'CONTAINER_RUNNING';
    case 'exited':
      return 'CONTAINER_EXITED';
    default:
      return 'CONTAINER_UNKNOWN';
  }
}
