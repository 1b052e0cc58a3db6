import { BerthError } from '../../common/errors.js';
import type { ContainerService } from '../../containers/container-service.js';
import type { ExecSyncRequest__Output } from '../gen/runtime/v1/ExecSyncRequest.js';
import type { ExecSyncResponse } from '../gen/runtime/v1/ExecSyncResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireId } from './convert.js';

/** ExecSync: output capped per stream; a timeout kills the command and answers DEADLINE_EXCEEDED. */
export const execSync =
  (svc: ContainerService): UnaryHandler<ExecSyncRequest__Output, ExecSyncResponse> =>
  async (req, ctx) => {
    if (req.cmd.length === 0) throw new BerthError('InvalidArgument', 'cmd is required');
    const timeout = Number(req.timeout);
    if (!Number.isFinite(timeout) || timeout < 0 || timeout > 86_400)
      throw new BerthError('InvalidArgument', `timeout ${req.timeout} is not a number of seconds from 0 to 86400`);
    const r = await svc.execSync(requireId(req.container_id, 'container_id'), req.cmd, timeout, ctx.signal);
    return { stdout: r.stdout, stderr: r.stderr, exit_code: r.exitCode };
  };
