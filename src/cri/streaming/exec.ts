/**
 * Exec: validates the request (the container must be running) and hands back a
 * single-use URL of the streaming server, which runs the command once the client
 * connects (src/streaming/).
 */
import { BerthError } from '../../common/errors.js';
import type { ContainerService } from '../../containers/container-service.js';
import type { StreamingServer } from '../../streaming/server.js';
import type { ExecRequest__Output } from '../gen/runtime/v1/ExecRequest.js';
import type { ExecResponse } from '../gen/runtime/v1/ExecResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requiredString } from '../validate.js';

export const exec =
  (d: { containers: ContainerService; streaming: StreamingServer }): UnaryHandler<ExecRequest__Output, ExecResponse> =>
  async (req) => {
    const id = requiredString(req.container_id, 'container_id', 128);
    if (req.cmd.length === 0) throw new BerthError('InvalidArgument', 'cmd is required');
    if (!req.stdin && !req.stdout && !req.stderr) throw new BerthError('InvalidArgument', 'one of stdin, stdout and stderr must be true');
    if (req.tty && req.stderr) throw new BerthError('InvalidArgument', 'tty and stderr cannot both be true: a terminal has one output');
    const c = d.containers.requireContainer(id, { states: ['running'] });
    return { url: d.streaming.execUrl({ containerId: c.id, cmd: req.cmd, tty: req.tty, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr }) };
  };
