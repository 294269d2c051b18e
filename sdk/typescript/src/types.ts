/**
 * The SDK's names for the wire types. Every one is derived from `wire.ts`, which is
 * generated from the server's OpenAPI document (`tools/openapi_ts.py`; `make lint` fails
 * when it is stale), so these cannot drift from what the API takes and answers.
 */

import type { components } from './wire.js'

type Schemas = components['schemas']

/** A run as the API answers it: id, effective spec (defaults filled), aggregate. */
export type RunView = Schemas['RunView']
/** The rolled-up status of a run and its shard counts: what `wait()` resolves to. */
export type Aggregate = Schemas['Aggregate']
/** One shard: index, status, attempts, last exit code and reason, history. */
export type ShardView = Schemas['ShardView']
/** One try at running one shard. */
export type AttemptView = Schemas['AttemptView']
export type RunState = Schemas['RunState']
export type ShardState = Schemas['ShardState']
export type AttemptState = Schemas['AttemptState']
export type RunList = Schemas['RunList']
/** A dry run's verdict and costs (`RunsClient.quote`). */
export type Quote = Schemas['Quote']
export type VolumeView = Schemas['VolumeView']
export type OrgView = Schemas['OrgView']
export type UsageReport = Schemas['UsageReport']
export type SecretView = Schemas['SecretView']
export type FailureGroup = Schemas['FailureGroup']
/** One record of the all-shard log stream. */
export type LogChunk = Schemas['LogChunk']
export type ErrorBody = Schemas['ErrorBody']
export type MachineName = Schemas['RunSpec']['machine']
/** `{ volumeId, mountPath }`: a volume mounted read-write into every shard. */
export type RunVolumeMount = Schemas['VolumeMount']
/** A `failurePolicy` rule, e.g. `{ onExitCodes: { operator: 'In', values: [42] }, action: 'FailIndex' }`. */
export type FailureRule = Schemas['FailureRule']
/** The delay before an index's next attempt (every field optional: the server's defaults). */
export type RetryBackoff = Partial<Schemas['RetryBackoff']>
/** The merge step, run once every shard ended: `command` required, the rest optional. */
export type MergeSpec = Pick<Schemas['MergeSpec'], 'command'> &
  Partial<Omit<Schemas['MergeSpec'], 'command'>>

type WireSpec = Schemas['RunSpec']

/**
 * What `RunsClient.runDistributed` takes: the wire's RunSpec (camelCase, as the product
 * page's configuration reference names it), every field optional; the server fills the
 * defaults. With no `image` the command runs on the host in `workingDir` (default: the
 * caller's current directory).
 */
export type DistributedRunSpec = {
  [K in Exclude<keyof WireSpec, 'merge' | 'retryBackoff'>]?: WireSpec[K]
} & {
  merge?: MergeSpec | null
  retryBackoff?: RetryBackoff
}

/** What `RunsClient.run` takes: a single-shard run (the N=1 case). */
export type RunSpec = Omit<
  DistributedRunSpec,
  | 'parallelism'
  | 'completionMode'
  | 'gangScheduling'
  | 'backoffLimitPerIndex'
  | 'maxFailedIndexes'
  | 'admissionTimeoutSeconds'
  | 'admissionFallback'
>

export type LogStream = 'stdout' | 'stderr'

/** The captured output of one shard attempt. */
export interface Logs {
  stdout: string
  stderr: string
}

/** One line of a shard's log (without its newline), from `Run.streamAllLogs`. */
export interface LogLine {
  shard: number
  attempt: number
  line: string
  /** When the control plane read it (ISO 8601, UTC). */
  ts: string
}

/** The statuses after which a run never changes again (unless retried). */
export const TERMINAL_RUN_STATES: readonly RunState[] = [
  'succeeded',
  'partial',
  'failed',
  'cancelled',
  'timed_out',
]
