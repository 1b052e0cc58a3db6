import { BerthError } from '../../common/errors.js';
import { criuFacility } from '../../oci/features.js';
import type { CheckpointContainerRequest__Output } from '../gen/runtime/v1/CheckpointContainerRequest.js';
import type { CheckpointContainerResponse } from '../gen/runtime/v1/CheckpointContainerResponse.js';
import type { UnaryHandler } from '../rpc.js';

/**
 * CheckpointContainer (kubelet's container checkpoint API): UNIMPLEMENTED, saying why. berth
 * has no checkpoint/restore, and it needs CRIU, whose state on this host (`criu check`,
 * run once) is part of the answer, so a caller can tell a host that lacks CRIU from
 * berth's own gap.
 */
export const checkpointContainer = (): UnaryHandler<CheckpointContainerRequest__Output, CheckpointContainerResponse> => async () => {
  const criu = await criuFacility();
  const host = criu.available ? 'criu check passes on this host' : (criu.reason ?? 'CRIU is not usable on this host');
  throw new BerthError('Unimplemented', `CheckpointContainer: berth does not implement checkpoint/restore (it would need CRIU; ${host})`);
};
