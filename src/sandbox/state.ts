/**
 * The pod sandbox state machine.
 *
 *            RunPodSandbox                 StopPodSandbox              RemovePodSandbox
 *   (none) ───────────────▶ creating ──▶ ready ──────────────▶ notready ──────────────▶ removing ──▶ (row gone)
 *                              │                                  ▲                        ▲
 *                              └── failure: rolled back, row gone │  recovery: pins lost   │
 *                                                                 └── (e.g. after reboot)  └── Remove of a ready pod stops it first
 *
 * - `creating` is recorded before anything is made, so a crash mid-creation leaves a
 *   row recovery can roll back. A pod becomes `ready` only when everything exists.
 * - `notready` holds no network and no namespaces; only its files and row remain.
 * - `removing` is recorded before files go, so recovery finishes a removal a crash
 *   interrupted. Stop and Remove are idempotent in every state.
 */
export type SandboxState = 'creating' | 'ready' | 'notready' | 'removing';

const TRANSITIONS: Record<SandboxState, readonly SandboxState[]> = {
  creating: ['ready', 'removing'],
  ready: ['notready', 'removing'],
  notready: ['notready', 'removing'],
  removing: ['removing'],
};

export function canTransition(from: SandboxState, to: SandboxState): boolean {
  return TRANSITIONS[from].includes(to);
}

/** CRI's PodSandboxState for a berth state. */
export function criState(s: SandboxState): 'SANDBOX_READY' | 'SANDBOX_NOTREADY' {
  return s === 'ready' ? 'SANDBOX_READY' : 'SANDBOX_NOTREADY';
}
