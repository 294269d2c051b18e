/**
 * One error tree, mirroring the Python SDK's (`sylphx._core.errors`): each class names
 * the HTTP status and the stable `error` code of the API's error body, and the SDK rebuilds
 * exactly the class the server raised from that body.
 */

/** One broken rule: the field it is about, the rule and the fix (quota errors add
 * `limit`, `max`, `current` and `requested`). */
export interface ErrorDetail {
  field?: string
  rule?: string
  fix?: string
  [key: string]: unknown
}

/** Base of every sylphx error: a human message (what went wrong and, after `Fix:`, what
 * to do) and structured `details`. */
export class SylphxError extends Error {
  static readonly statusCode: number = 500
  static readonly code: string = 'internal_error'
  /** The HTTP status the server answered with (or the class's own, when raised locally). */
  readonly status: number
  /** The stable error code of the API's body, e.g. `validation_error`. */
  readonly code: string
  readonly details: ErrorDetail[]

  constructor(message: string, options: { details?: ErrorDetail[]; status?: number } = {}) {
    super(message)
    const cls = new.target as typeof SylphxError
    this.name = cls.name
    this.code = cls.code
    this.status = options.status ?? cls.statusCode
    this.details = options.details ?? []
  }
}

/** A run spec or request field breaks a rule; `details` name field, rule and fix (422). */
export class ValidationError extends SylphxError {
  static override readonly statusCode = 422
  static override readonly code = 'validation_error'
}

/** The run can never fit this executor (a gang larger than the whole cluster, say). */
export class Unschedulable extends SylphxError {
  static override readonly statusCode = 422
  static override readonly code = 'unschedulable'
}

/** No API key, or one that is unknown or revoked (401). */
export class Unauthorized extends SylphxError {
  static override readonly statusCode = 401
  static override readonly code = 'unauthorized'
}

/** A plan budget would be exceeded (429): per-job parallelism or org concurrent shards, or
 * a followed log stream past those open at once. `retryAfter` (seconds, from the
 * `Retry-After` header) is set when waiting helps; undefined when it cannot. */
export class QuotaExceeded extends SylphxError {
  static override readonly statusCode = 429
  static override readonly code = 'quota_exceeded'
  retryAfter: number | undefined

  constructor(
    message: string,
    options: { details?: ErrorDetail[]; status?: number; retryAfter?: number } = {},
  ) {
    super(message, options)
    this.retryAfter = options.retryAfter
  }
}

/** The org reached its monthly spend limit (402): new runs are refused. */
export class SpendLimitReached extends SylphxError {
  static override readonly statusCode = 402
  static override readonly code = 'spend_limit_reached'
}

/** The run, shard, volume or secret does not exist, or is another org's (404). */
export class NotFound extends SylphxError {
  static override readonly statusCode = 404
  static override readonly code = 'not_found'
}

/** The endpoint does not take the request's HTTP method (405). */
export class MethodNotAllowed extends SylphxError {
  static override readonly statusCode = 405
  static override readonly code = 'method_not_allowed'
}

/** The request body is larger than the API accepts (413). */
export class PayloadTooLarge extends SylphxError {
  static override readonly statusCode = 413
  static override readonly code = 'payload_too_large'
}

/** The request conflicts with the object's state, e.g. deleting a volume in use (409). */
export class ConflictError extends SylphxError {
  static override readonly statusCode = 409
  static override readonly code = 'conflict'
}

/** A status change the state machine does not allow (409). */
export class IllegalTransition extends SylphxError {
  static override readonly statusCode = 409
  static override readonly code = 'illegal_transition'
}

/** The executor could not do what was asked (503). */
export class ExecutorError extends SylphxError {
  static override readonly statusCode = 503
  static override readonly code = 'executor_error'
}

/** The control plane could not be reached, or is shutting down (503). */
export class ServerUnavailable extends SylphxError {
  static override readonly statusCode = 503
  static override readonly code = 'server_unavailable'
}

/** The database cannot be reached or used right now (503). */
export class StoreUnavailable extends SylphxError {
  static override readonly statusCode = 503
  static override readonly code = 'store_unavailable'
}

/** A disk the control plane writes to is full; nothing was stored (503). */
export class StorageFull extends SylphxError {
  static override readonly statusCode = 503
  static override readonly code = 'storage_full'
}

/** A response the SDK could not understand (not JSON, unexpected shape). */
export class TransportError extends SylphxError {
  static override readonly statusCode = 502
  static override readonly code = 'transport_error'
}

type ErrorClass = typeof SylphxError

/** Every class by its error code, as the server names them. */
export const ERRORS_BY_CODE: Readonly<Record<string, ErrorClass>> = Object.freeze(
  Object.fromEntries(
    [
      SylphxError,
      ValidationError,
      Unschedulable,
      Unauthorized,
      QuotaExceeded,
      SpendLimitReached,
      NotFound,
      MethodNotAllowed,
      PayloadTooLarge,
      ConflictError,
      IllegalTransition,
      ExecutorError,
      ServerUnavailable,
      StoreUnavailable,
      StorageFull,
      TransportError,
    ].map((cls) => [cls.code, cls]),
  ),
)

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** The typed error an API error body describes (`{error, message, details?}`); a body
 * that is not one is a TransportError naming the status. `retryAfter`: the response's
 * `Retry-After` header, in seconds, if any. */
export function errorFromBody(status: number, body: unknown, retryAfter?: number): SylphxError {
  if (!isRecord(body) || typeof body.message !== 'string') {
    const text = typeof body === 'string' ? body : JSON.stringify(body)
    return new TransportError(`HTTP ${status}: ${String(text).slice(0, 500)}`, { status })
  }
  const details = Array.isArray(body.details) ? (body.details.filter(isRecord) as ErrorDetail[]) : []
  const cls = ERRORS_BY_CODE[String(body.error)] ?? SylphxError
  if (cls === QuotaExceeded) {
    const fromBody = typeof body.retryAfter === 'number' ? body.retryAfter : undefined
    return new QuotaExceeded(body.message, { details, status, retryAfter: retryAfter ?? fromBody })
  }
  return new cls(body.message, { details, status })
}
