import { BerthError } from '../../common/errors.js';
import type { ContainerService } from '../../containers/container-service.js';
import type { ContainerStatusRequest__Output } from '../gen/runtime/v1/ContainerStatusRequest.js';
import type { ContainerStatusResponse } from '../gen/runtime/v1/ContainerStatusResponse.js';
import type { CreateContainerRequest__Output } from '../gen/runtime/v1/CreateContainerRequest.js';
import type { CreateContainerResponse } from '../gen/runtime/v1/CreateContainerResponse.js';
import type { ReopenContainerLogRequest__Output } from '../gen/runtime/v1/ReopenContainerLogRequest.js';
import type { ReopenContainerLogResponse } from '../gen/runtime/v1/ReopenContainerLogResponse.js';
import type { UpdateContainerResourcesRequest__Output } from '../gen/runtime/v1/UpdateContainerResourcesRequest.js';
import type { UpdateContainerResourcesResponse } from '../gen/runtime/v1/UpdateContainerResourcesResponse.js';
import type { ExecSyncRequest__Output } from '../gen/runtime/v1/ExecSyncRequest.js';
import type { ExecSyncResponse } from '../gen/runtime/v1/ExecSyncResponse.js';
import type { ListContainersRequest__Output } from '../gen/runtime/v1/ListContainersRequest.js';
import type { ListContainersResponse } from '../gen/runtime/v1/ListContainersResponse.js';
import type { RemoveContainerRequest__Output } from '../gen/runtime/v1/RemoveContainerRequest.js';
import type { RemoveContainerResponse } from '../gen/runtime/v1/RemoveContainerResponse.js';
import type { StartContainerRequest__Output } from '../gen/runtime/v1/StartContainerRequest.js';
import type { StartContainerResponse } from '../gen/runtime/v1/StartContainerResponse.js';
import type { StopContainerRequest__Output } from '../gen/runtime/v1/StopContainerRequest.js';
import type { StopContainerResponse } from '../gen/runtime/v1/StopContainerResponse.js';
import type { StreamContainersRequest__Output } from '../gen/runtime/v1/StreamContainersRequest.js';
import type { StreamContainersResponse } from '../gen/runtime/v1/StreamContainersResponse.js';
import { sendPaged, type StreamHandler, type UnaryHandler } from '../rpc.js';
import { boundedString, required, requiredString } from '../validate.js';
import {
  filteredContainers,
  mergeResources,
  recordedResources,
  specStopSignal,
  specUser,
  toCriContainer,
  toSpecConfig,
  toSpecResources,
  verboseInfo,
} from './convert.js';

const id = (v: string, field: string): string => requiredString(v, field, 128);

export const createContainer =
  (svc: ContainerService): UnaryHandler<CreateContainerRequest__Output, CreateContainerResponse> =>
  async (req, ctx) => {
    const cfg = required(req.config, 'config');
    const md = required(cfg.metadata, 'config.metadata');
    const image = requiredString(cfg.image?.image, 'config.image.image', 1024);
    const containerId = await svc.create(
      {
        sandboxId: id(req.pod_sandbox_id, 'pod_sandbox_id'),
        name: requiredString(md.name, 'config.metadata.name', 253),
        attempt: md.attempt,
        image,
        logPath: boundedString(cfg.log_path, 'config.log_path', 4096),
        config: toSpecConfig(cfg),
        raw: cfg as unknown as Record<string, unknown>,
      },
      ctx.signal,
    );
    return { container_id: containerId };
  };

export const startContainer =
  (svc: ContainerService): UnaryHandler<StartContainerRequest__Output, StartContainerResponse> =>
  async (req) => {
    await svc.start(id(req.container_id, 'container_id'));
    return {};
  };

/** StopContainer: per CRI, stopping an exited container succeeds. */
export const stopContainer =
  (svc: ContainerService): UnaryHandler<StopContainerRequest__Output, StopContainerResponse> =>
  async (req, ctx) => {
    const timeout = Number(req.timeout);
    if (!Number.isFinite(timeout) || timeout < 0 || timeout > 86_400)
      throw new BerthError('InvalidArgument', `timeout ${req.timeout} is not a number of seconds from 0 to 86400`);
    await svc.stop(id(req.container_id, 'container_id'), timeout, ctx.signal);
    return {};
  };

/** RemoveContainer: per CRI, removing an unknown container succeeds; a running one is killed. */
export const removeContainer =
  (svc: ContainerService): UnaryHandler<RemoveContainerRequest__Output, RemoveContainerResponse> =>
  async (req) => {
    await svc.remove(id(req.container_id, 'container_id'));
    return {};
  };

/**
 * ContainerStatus. `resources` are the ones in force (as created, then as updated);
 * `user` is the identity the process runs as. With `verbose`, info["info"] holds what
 * containerd and CRI-O put there too (so `crictl inspect` templates work alike):
 * `sandboxID`, `pid`, `privileged`, the ContainerConfig as `config` and the OCI spec as
 * `runtimeSpec`; plus berth's own `shimPid` and `state`.
 */
export const containerStatus =
  (svc: ContainerService): UnaryHandler<ContainerStatusRequest__Output, ContainerStatusResponse> =>
  async (req) => {
    const cid = id(req.container_id, 'container_id');
    const c = svc.find(cid);
    if (!c || c.state === 'creating') throw new BerthError('NotFound', `container "${cid}" not found`);
    const base = toCriContainer(c, svc.imageOf(c));
    const cfg = c.config as { mounts?: unknown[] };
    const spec = await svc.runtimeSpec(c.id);
    const user = specUser(spec);
    const resources = recordedResources(c);
    return {
      status: {
        id: c.id,
        metadata: base.metadata,
        state: base.state,
        created_at: c.createdAt,
        started_at: c.startedAt,
        finished_at: c.finishedAt,
        exit_code: c.exitCode ?? 0,
        image: base.image,
        image_ref: base.image_ref,
        image_id: c.imageId,
        reason: c.reason,
        message: c.message,
        labels: base.labels,
        annotations: base.annotations,
        mounts: (cfg.mounts ?? []) as never,
        log_path: c.logPath,
        ...(resources ? { resources: { linux: resources } } : {}),
        ...(user ? { user: { linux: user } } : {}),
        stop_signal: specStopSignal(spec) as never,
      },
      info: req.verbose ? { info: JSON.stringify(verboseInfo(c, spec)) } : ({} as Record<string, string>),
    };
  };

export const listContainers =
  (svc: ContainerService): UnaryHandler<ListContainersRequest__Output, ListContainersResponse> =>
  async (req) => ({
    containers: filteredContainers(svc, req.filter),
  });

export const streamContainers =
  (svc: ContainerService): StreamHandler<StreamContainersRequest__Output, StreamContainersResponse> =>
  (req, _ctx, send) =>
    sendPaged(filteredContainers(svc, req.filter), send, (page) => ({ containers: page }));

/** ExecSync: output capped per stream; a timeout kills the command and answers DEADLINE_EXCEEDED. */
export const execSync =
  (svc: ContainerService): UnaryHandler<ExecSyncRequest__Output, ExecSyncResponse> =>
  async (req, ctx) => {
    if (req.cmd.length === 0) throw new BerthError('InvalidArgument', 'cmd is required');
    const timeout = Number(req.timeout);
    if (!Number.isFinite(timeout) || timeout < 0 || timeout > 86_400)
      throw new BerthError('InvalidArgument', `timeout ${req.timeout} is not a number of seconds from 0 to 86400`);
    const r = await svc.execSync(id(req.container_id, 'container_id'), req.cmd, timeout, ctx.signal);
    return { stdout: r.stdout, stderr: r.stderr, exit_code: r.exitCode };
  };

/** ReopenContainerLog: kubelet rotated the log file; the shim opens a new one. */
export const reopenContainerLog =
  (svc: ContainerService): UnaryHandler<ReopenContainerLogRequest__Output, ReopenContainerLogResponse> =>
  async (req) => {
    await svc.reopenLog(id(req.container_id, 'container_id'));
    return {};
  };

/** UpdateContainerResources: CPU and memory of a running container, applied and recorded. */
export const updateContainerResources =
  (svc: ContainerService): UnaryHandler<UpdateContainerResourcesRequest__Output, UpdateContainerResourcesResponse> =>
  async (req) => {
    const linux = required(req.linux, 'linux');
    const r = toSpecResources(linux);
    if (r.memory_limit_in_bytes < 0 || r.cpu_shares < 0 || r.cpu_period < 0)
      throw new BerthError('InvalidArgument', 'linux: negative memory limit, CPU shares or CPU period');
    const cid = id(req.container_id, 'container_id');
    // Recorded as merged: crictl sends only the fields given on its command line (zero for
    // the rest), and only set fields are applied, so the others stay as they were.
    const cur = svc.find(cid);
    await svc.updateResources(cid, r, mergeResources(cur ? recordedResources(cur) : undefined, linux));
    return {};
  };
