/**
 * Where the control plane is and how to talk to it (`createClient`), and how one request
 * is sent and repeated (`request`), as the Python SDK's `transport`, `retrying` and
 * `async_calls` do:
 *
 * - a request that never reached a server (connection refused, DNS, connect timeout) is
 *   repeated whatever its method: a control plane restarting is away for a few seconds;
 * - idempotent requests (reads, long-polls, cancels, submits carrying an idempotency key)
 *   are also repeated after a 503 or a connection lost mid-answer;
 * - a 429 is repeated only with `retry.waitForQuota`, after the `Retry-After` it names;
 * - nothing else is: a 4xx is the caller's to fix.
 *
 * Waits start at 0.1 s and double up to 5 s, with up to 1 s of jitter; at most
 * `retry.attempts` tries within `retry.timeout` seconds (10 tries, 60 s by default).
 */

import {
  QuotaExceeded,
  ServerUnavailable,
  StoreUnavailable,
  SylphxError,
  TransportError,
  ValidationError,
  errorFromBody,
} from './errors.js'

export const VERSION = '0.1.0'

/** When the SDK repeats a request (see the module's comment). */
export interface RetryPolicy {
  /** At most this many tries of one request (default 10; 1: never repeat). */
  attempts?: number
  /** Seconds within which the tries are made (default 60: more than a restart takes). */
  timeout?: number
  /** Seconds a submit may keep waiting out 429s (undefined: raise QuotaExceeded at once). */
  waitForQuota?: number
}

export interface ClientOptions {
  /** The API key; default `$SYLPHX_TOKEN`. */
  token?: string
  /** Per-request timeout in seconds (default 30; long-polls add their wait). */
  timeout?: number
  /** When requests are repeated (default: ride through a restart of up to 60 s). */
  retry?: RetryPolicy
  /** The fetch to use (default: the platform's `globalThis.fetch`). */
  fetch?: typeof fetch
}

/** A connection to one control plane; build it with {@link createClient}, share one per
 * process. It holds no sockets of its own (the platform's fetch pools them). */
export class ClientConfig {
  readonly baseUrl: string
  readonly timeout: number
  readonly retry: Required<Pick<RetryPolicy, 'attempts' | 'timeout'>> & Pick<RetryPolicy, 'waitForQuota'>
  readonly fetch: typeof fetch
  readonly #token: string | undefined

  constructor(baseUrl: string, options: ClientOptions = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, '')
    this.#token = options.token
    this.timeout = options.timeout ?? 30
    this.retry = {
      attempts: options.retry?.attempts ?? 10,
      timeout: options.retry?.timeout ?? 60,
      waitForQuota: options.retry?.waitForQuota,
    }
    const platform = options.fetch ?? globalThis.fetch
    if (typeof platform !== 'function') {
      throw new TransportError('no fetch: the SDK needs Node.js >= 18 (or pass options.fetch)')
    }
    this.fetch = platform
  }

  /** Whether requests carry an API key. */
  get hasToken(): boolean {
    return this.#token !== undefined && this.#token !== ''
  }

  /** Headers sent with every request (the API key, when there is one). */
  headers(): Record<string, string> {
    const headers: Record<string, string> = { 'User-Agent': `sylphx-sdk-typescript/${VERSION}` }
    if (this.hasToken) headers.Authorization = `Bearer ${this.#token}`
    return headers
  }

  toString(): string {
    return `ClientConfig(${this.baseUrl})`
  }
}

function env(name: string): string | undefined {
  const value = typeof process === 'undefined' ? undefined : process.env[name]
  return value === undefined || value === '' ? undefined : value
}

/**
 * Connect to a control plane at `url` (default `$SYLPHX_URL`), e.g.
 * `createClient('http://127.0.0.1:8080', { token })`. The API key defaults to
 * `$SYLPHX_TOKEN`. Nothing is sent until the first call.
 */
export function createClient(url?: string, options: ClientOptions = {}): ClientConfig {
  const where = url ?? env('SYLPHX_URL')
  if (where === undefined || where === '') {
    const fix = 'pass the control plane URL, e.g. createClient("http://127.0.0.1:8080"), or set SYLPHX_URL'
    throw new ValidationError(`url: is required. Fix: ${fix}`, {
      details: [{ field: 'url', rule: 'is required', fix }],
    })
  }
  let parsed: URL
  try {
    parsed = new URL(where)
  } catch {
    parsed = new URL('invalid:')
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    const fix = 'give an http:// or https:// URL, e.g. http://127.0.0.1:8080'
    throw new ValidationError(
      `url: must be an http(s) URL (got ${JSON.stringify(where)}). Fix: ${fix}`,
      { details: [{ field: 'url', rule: 'must be an http(s) URL', fix }] },
    )
  }
  return new ClientConfig(where, { ...options, token: options.token ?? env('SYLPHX_TOKEN') })
}

// -- sending a request ----------------------------------------------------------------------

/** Errors of requests that never reached a server: safe to repeat whatever the method. */
const neverReached = new WeakSet<Error>()

const CONNECT_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
])

function causeCode(err: unknown): string | undefined {
  let current: unknown = err
  for (let depth = 0; depth < 4 && current !== undefined && current !== null; depth++) {
    const code = (current as { code?: unknown }).code
    if (typeof code === 'string') return code
    current = (current as { cause?: unknown }).cause
  }
  return undefined
}

function unavailable(config: ClientConfig, err: unknown, timedOut: number | undefined): ServerUnavailable {
  let what: string
  if (timedOut !== undefined) {
    what = `no response within ${timedOut}s`
  } else {
    const code = causeCode(err)
    const cause = (err as { cause?: { message?: unknown } } | undefined)?.cause?.message
    const message = typeof cause === 'string' && cause ? cause : String((err as Error)?.message ?? err)
    what = code !== undefined && !message.includes(code) ? `${code}: ${message}` : message
  }
  const fix = 'start `sylphx server` there, or correct the URL'
  const error = new ServerUnavailable(
    `cannot reach the sylphx control plane at ${config.baseUrl} (${what}). Fix: ${fix}`,
  )
  if (timedOut === undefined && CONNECT_CODES.has(causeCode(err) ?? '')) neverReached.add(error)
  return error
}

export interface RequestOptions {
  body?: unknown
  params?: Record<string, string | number | boolean | undefined>
  headers?: Record<string, string>
  /** Seconds; default the config's timeout. */
  timeout?: number
  /** Repeat after a 503 or a lost connection (default: GET only). */
  idempotent?: boolean
  /** For streams: bound only until the headers arrive. */
  streaming?: boolean
}

/** A response whose status is 2xx, with its body not yet read (streams) or read. */
export interface Answer {
  response: Response
  /** Cancel the request's timer (streams: once done with the body). */
  done: () => void
}

function url(config: ClientConfig, path: string, params?: RequestOptions['params']): string {
  const query = new URLSearchParams()
  for (const [key, value] of Object.entries(params ?? {})) {
    if (value !== undefined) query.set(key, String(value))
  }
  const tail = query.toString()
  return `${config.baseUrl}${path}${tail ? `?${tail}` : ''}`
}

function retryAfterOf(response: Response): number | undefined {
  const header = response.headers.get('retry-after')
  return header !== null && /^\d+$/.test(header) ? Number(header) : undefined
}

/** The typed error of a non-2xx response (its body is read here). */
async function failure(config: ClientConfig, response: Response): Promise<SylphxError> {
  let text: string
  try {
    text = await response.text()
  } catch (err) {
    return unavailable(config, err, undefined)
  }
  let body: unknown = text
  try {
    body = JSON.parse(text)
  } catch {
    // not JSON: errorFromBody makes it a TransportError naming the status
  }
  return errorFromBody(response.status, body, retryAfterOf(response))
}

async function sendOnce(
  config: ClientConfig,
  method: string,
  path: string,
  options: RequestOptions,
): Promise<Answer> {
  const seconds = options.timeout ?? config.timeout
  const controller = new AbortController()
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    controller.abort()
  }, seconds * 1000)
  const done = (): void => clearTimeout(timer)
  const headers: Record<string, string> = { ...config.headers(), ...(options.headers ?? {}) }
  let body: string | undefined
  if (options.body !== undefined) {
    body = JSON.stringify(options.body)
    headers['Content-Type'] = 'application/json'
  }
  let response: Response
  try {
    response = await config.fetch(url(config, path, options.params), {
      method,
      headers,
      body,
      signal: controller.signal,
    })
  } catch (err) {
    done()
    throw unavailable(config, err, timedOut ? seconds : undefined)
  }
  if (!response.ok) {
    const error = await failure(config, response)
    done()
    throw error
  }
  if (options.streaming) {
    return { response, done }
  }
  // Read the whole body under the same timer, so a connection cut mid-answer is retried.
  let text: string
  try {
    text = await response.text()
  } catch (err) {
    throw unavailable(config, err, timedOut ? seconds : undefined)
  } finally {
    done()
  }
  const empty = response.status === 204 || response.status === 205 || response.status === 304
  return { response: new Response(empty ? null : text, response), done: () => {} }
}

function sleep(seconds: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, seconds) * 1000))
}

/** How long to wait before repeating after `err`, or undefined: raise it. */
function retryDelay(config: ClientConfig, err: unknown, idempotent: boolean, attempt: number): number | undefined {
  const backoff = (): number => Math.min(5, 0.1 * 2 ** (attempt - 1)) + Math.random()
  if (err instanceof Error && neverReached.has(err)) return backoff()
  if (err instanceof QuotaExceeded) {
    if (config.retry.waitForQuota === undefined) return undefined
    return err.retryAfter ?? backoff()
  }
  if (idempotent && (err instanceof ServerUnavailable || err instanceof StoreUnavailable)) {
    return backoff()
  }
  return undefined
}

/** Send one request, repeated as `config.retry` says; a 2xx answer, or the typed error. */
export async function request(
  config: ClientConfig,
  method: string,
  path: string,
  options: RequestOptions = {},
): Promise<Answer> {
  const idempotent = options.idempotent ?? method === 'GET'
  const quota = config.retry.waitForQuota ?? 0
  const budget = Math.max(config.retry.timeout, quota)
  const started = Date.now()
  for (let attempt = 1; ; attempt++) {
    try {
      return await sendOnce(config, method, path, options)
    } catch (err) {
      const delay = retryDelay(config, err, idempotent, attempt)
      const elapsed = (Date.now() - started) / 1000
      const outOfTries = quota === 0 && attempt >= config.retry.attempts
      if (delay === undefined || outOfTries || elapsed + delay > budget) throw err
      await sleep(delay)
    }
  }
}

/** A successful answer's JSON body, or a TransportError. */
export async function json<T>(answer: Answer | Promise<Answer>): Promise<T> {
  const { response } = await answer
  const text = await response.text()
  try {
    return JSON.parse(text) as T
  } catch {
    throw new TransportError(
      `expected JSON, got ${JSON.stringify(response.headers.get('content-type'))}: ${JSON.stringify(text.slice(0, 200))}`,
    )
  }
}

/** `/v1/runs/{id}` and below, the id escaped. */
export function runPath(runId: string, suffix = ''): string {
  return `/v1/runs/${encodeURIComponent(runId)}${suffix}`
}
