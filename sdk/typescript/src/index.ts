/**
 * `@sylphx/sdk`: the TypeScript SDK of sylphx, a self-hosted distributed batch compute
 * platform. See README.md; the Python SDK (`sylphx`) is its twin.
 */

export { ClientConfig, type ClientOptions, type RetryPolicy, VERSION, createClient } from './client.js'
export {
  ConflictError,
  ERRORS_BY_CODE,
  type ErrorDetail,
  ExecutorError,
  IllegalTransition,
  MethodNotAllowed,
  NotFound,
  PayloadTooLarge,
  QuotaExceeded,
  ServerUnavailable,
  SpendLimitReached,
  StorageFull,
  StoreUnavailable,
  SylphxError,
  TransportError,
  Unauthorized,
  Unschedulable,
  ValidationError,
  errorFromBody,
} from './errors.js'
export { SecretsClient, UsageClient, VolumesClient } from './resources.js'
export { LONG_POLL_SECONDS, MAX_WAIT, Run, RunsClient, WaitTimeout, compressIndices } from './runs.js'
export * from './types.js'
export type { components, paths } from './wire.js'
