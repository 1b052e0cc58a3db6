import type { Logger } from '../common/logger.js';
import type { BerthConfig } from '../config/schema.js';
import type { ContainerService } from '../containers/container-service.js';
import type { ImageService } from '../images/image-service.js';
import type { SandboxService } from '../sandbox/sandbox-service.js';
import type { CadvisorCollector } from '../stats/cadvisor-samples.js';
import type { StatsService } from '../stats/stats-service.js';
import type { StreamingServer } from '../streaming/server.js';
import type { RuntimeSettingsRepository } from '../store/runtime-settings.js';
import type { Tracing } from '../telemetry/tracing.js';

/** What the CRI handlers are given by the composition root (src/main.ts). */
export interface CriDeps {
  config: BerthConfig;
  settings: RuntimeSettingsRepository;
  log: Logger;
  images: ImageService;
  sandboxes: SandboxService;
  containers: ContainerService;
  stats: StatsService;
  streaming: StreamingServer;
  /** Tracing, when a collector is configured. */
  tracing?: Pick<Tracing, 'info'>;
  /** The cached cAdvisor-style samples (ListPodSandboxMetrics, /metrics/cadvisor). */
  cadvisor: CadvisorCollector;
  /** What berthd holds now, for verbose Status (see {@link LiveCounts}). */
  liveCounts(): LiveCounts;
  /** The metrics endpoint's state for verbose Status: its address when serving, else why not. */
  metricsEndpoint(): { serving: boolean; address?: string; error?: string };
}

/** What verbose Status reports as "counts": the objects berthd tracks and the work under way. */
export interface LiveCounts {
  podsByState: Record<string, number>;
  containersByState: Record<string, number>;
  liveShims: number;
  pullsInProgress: number;
  eventSubscribers: number;
  streamingSessions: number;
  streamingUrlsPending: number;
}
