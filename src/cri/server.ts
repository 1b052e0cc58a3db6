/**
 * The CRI gRPC server: RuntimeService and ImageService with every RPC of the proto
 * registered through the one wrapper (wrap.ts). RPCs absent from the tables below answer
 * UNIMPLEMENTED with their name.
 */
import * as grpc from '@grpc/grpc-js';
import type { CriDeps } from './deps.js';
import type { ImageServiceHandlers } from './gen/runtime/v1/ImageService.js';
import type { RuntimeServiceHandlers } from './gen/runtime/v1/RuntimeService.js';
import { criApi } from './proto.js';
import { containerStatus } from './container/container-status.js';
import { createContainer } from './container/create-container.js';
import { execSync } from './container/exec-sync.js';
import { getContainerEvents } from './container/get-container-events.js';
import { listContainers } from './container/list-containers.js';
import { removeContainer } from './container/remove-container.js';
import { reopenContainerLog } from './container/reopen-container-log.js';
import { startContainer } from './container/start-container.js';
import { stopContainer } from './container/stop-container.js';
import { streamContainers } from './container/stream-containers.js';
import { updateContainerResources } from './container/update-container-resources.js';
import { checkpointContainer } from './container/checkpoint-container.js';
import { listMetricDescriptors } from './metrics/list-metric-descriptors.js';
import { listPodSandboxMetrics } from './metrics/list-pod-sandbox-metrics.js';
import { streamPodSandboxMetrics } from './metrics/stream-pod-sandbox-metrics.js';
import { imageFsInfo } from './image/image-fs-info.js';
import { imageStatus } from './image/image-status.js';
import { listImages } from './image/list-images.js';
import { streamImages } from './image/stream-images.js';
import { pullImage } from './image/pull-image.js';
import { removeImage } from './image/remove-image.js';
import type { ServiceHandlers } from './rpc.js';
import { runtimeConfig } from './runtime/runtime-config.js';
import { listPodSandbox } from './sandbox/list-pod-sandbox.js';
import { podSandboxStatus } from './sandbox/pod-sandbox-status.js';
import { streamPodSandboxes } from './sandbox/stream-pod-sandboxes.js';
import { runPodSandbox } from './sandbox/run-pod-sandbox.js';
import { removePodSandbox } from './sandbox/remove-pod-sandbox.js';
import { stopPodSandbox } from './sandbox/stop-pod-sandbox.js';
import { updatePodSandboxResources } from './sandbox/update-pod-sandbox-resources.js';
import { status } from './runtime/status.js';
import { attach } from './streaming/attach.js';
import { exec } from './streaming/exec.js';
import { portForward } from './streaming/port-forward.js';
import { containerStats } from './stats/container-stats.js';
import { listContainerStats } from './stats/list-container-stats.js';
import { listPodSandboxStats } from './stats/list-pod-sandbox-stats.js';
import { podSandboxStats } from './stats/pod-sandbox-stats.js';
import { streamContainerStats } from './stats/stream-container-stats.js';
import { streamPodSandboxStats } from './stats/stream-pod-sandbox-stats.js';
import { updateRuntimeConfig } from './runtime/update-runtime-config.js';
import { version } from './runtime/version.js';
import { wrapService, type WrapEnv } from './wrap.js';

/** kubelet's own CRI client allows 16 MiB messages each way; so does berth. */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export function runtimeHandlers(deps: CriDeps): ServiceHandlers<RuntimeServiceHandlers> {
  return {
    Version: version(),
    Status: status(deps),
    RuntimeConfig: runtimeConfig(deps),
    UpdateRuntimeConfig: updateRuntimeConfig(deps),
    RunPodSandbox: runPodSandbox(deps.sandboxes, deps.config.default_runtime),
    StopPodSandbox: stopPodSandbox(deps.sandboxes),
    RemovePodSandbox: removePodSandbox(deps.sandboxes),
    PodSandboxStatus: podSandboxStatus(deps.sandboxes),
    ListPodSandbox: listPodSandbox(deps.sandboxes),
    StreamPodSandboxes: streamPodSandboxes(deps.sandboxes),
    UpdatePodSandboxResources: updatePodSandboxResources(deps.sandboxes),
    CreateContainer: createContainer(deps.containers),
    StartContainer: startContainer(deps.containers),
    StopContainer: stopContainer(deps.containers),
    RemoveContainer: removeContainer(deps.containers),
    ContainerStatus: containerStatus(deps.containers),
    ListContainers: listContainers(deps.containers),
    StreamContainers: streamContainers(deps.containers),
    ExecSync: execSync(deps.containers),
    Exec: exec(deps),
    Attach: attach(deps),
    PortForward: portForward(deps),
    ReopenContainerLog: reopenContainerLog(deps.containers),
    UpdateContainerResources: updateContainerResources(deps.containers),
    CheckpointContainer: checkpointContainer(),
    GetContainerEvents: getContainerEvents(deps.containers),
    ContainerStats: containerStats(deps),
    ListContainerStats: listContainerStats(deps),
    StreamContainerStats: streamContainerStats(deps),
    PodSandboxStats: podSandboxStats(deps),
    ListPodSandboxStats: listPodSandboxStats(deps),
    StreamPodSandboxStats: streamPodSandboxStats(deps),
    ListMetricDescriptors: listMetricDescriptors(),
    ListPodSandboxMetrics: listPodSandboxMetrics(deps.cadvisor),
    StreamPodSandboxMetrics: streamPodSandboxMetrics(deps.cadvisor),
  };
}

export function imageHandlers(deps: CriDeps): ServiceHandlers<ImageServiceHandlers> {
  return {
    PullImage: pullImage(deps.images),
    ImageStatus: imageStatus(deps.images),
    ListImages: listImages(deps.images),
    StreamImages: streamImages(deps.images),
    RemoveImage: removeImage(deps.images),
    ImageFsInfo: imageFsInfo(deps.images),
  };
}

/** The full service name of each RPC ("runtime.v1.ImageService" for PullImage…), for metrics labels. */
export function serviceOfMethod(): (method: string) => string {
  const api = criApi().runtime.v1;
  const of = new Map<string, string>();
  for (const [name, svc] of [
    ['runtime.v1.RuntimeService', api.RuntimeService.service],
    ['runtime.v1.ImageService', api.ImageService.service],
  ] as const) {
    for (const method of Object.keys(svc)) of.set(method, name);
  }
  return (method) => of.get(method) ?? 'unknown';
}

/** Builds the server with both services; binding and shutdown are the caller's. */
export function createCriServer(env: WrapEnv, deps: CriDeps): grpc.Server {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    // No channelz: berth serves no channelz service, and its bookkeeping (a tracker and
    // five closures per call, timestamps per message) was part of every status call.
    'grpc.enable_channelz': 0,
  });
  const api = criApi().runtime.v1;
  for (const [definition, handlers] of [
    [api.RuntimeService.service, runtimeHandlers(deps)],
    [api.ImageService.service, imageHandlers(deps)],
  ] as const) {
    const svc = wrapService(env, definition, handlers as Record<string, never>);
    server.addService(svc.definition, svc.implementation);
  }
  return server;
}
