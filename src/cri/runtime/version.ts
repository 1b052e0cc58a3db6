import { BERTH_VERSION } from '../../common/version.js';
import type { VersionRequest__Output } from '../gen/runtime/v1/VersionRequest.js';
import type { VersionResponse } from '../gen/runtime/v1/VersionResponse.js';
import type { UnaryHandler } from '../rpc.js';

/** The version of the kubelet runtime API; CRI says "0.1.0" for v1. */
const KUBELET_API_VERSION = '0.1.0';

export const version = (): UnaryHandler<VersionRequest__Output, VersionResponse> => async () => ({
  version: KUBELET_API_VERSION,
  runtime_name: 'berth',
  runtime_version: BERTH_VERSION,
  runtime_api_version: 'v1',
});
