/**
 * Attach: validates the request (a running container; stdin only if the container was
 * created with stdin open) and hands back a single-use URL of the streaming server.
 */
import { BerthError } from '../../common/errors.js';
import type { ContainerService } from '../../containers/container-service.js';
import type { StreamingServer } from '../../streaming/server.js';
import type { AttachRequest__Output } from '../gen/runtime/v1/AttachRequest.js';
import type { AttachResponse } from '../gen/runtime/v1/AttachResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requiredString } from '../validate.js';

export const attach =
  (d: { containers: ContainerService; streaming: StreamingServer }): UnaryHandler<AttachRequest__Output, AttachResponse> =>
  async (req) => {
    const id = requiredString(req.container_id, 'container_id', 128);
    if (!req.stdin && !req.stdout && !req.stderr) throw new BerthError('InvalidArgument', 'one of stdin, stdout and stderr must be true');
    const c = d.containers.requireContainer(id, { states: ['running'] });
    if (req.stdin && !c.facts.stdin) throw new BerthError('FailedPrecondition', `container ${c.id} was created without stdin; it cannot take input`);
    // The client opens its channels by the request's tty: one output with a terminal.
    return { url: d.streaming.attachUrl({ containerId: c.id, cmd: [], tty: req.tty, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr && !req.tty }) };
  };
