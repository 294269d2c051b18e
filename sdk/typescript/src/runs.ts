/**
 * Runs: submit one (`RunsClient.runDistributed`, `RunsClient.run`), then follow it through
 * its handle (`Run`): `wait()`, `shards()`, `logs()`, `cancel()`, `retry()`. Mirrors the
 * Python SDK's `sylphx._client.async_runs`.
 */

import { randomUUID } from 'node:crypto'

import { type ClientConfig, json, request, runPath } from './client.js'
import { TransportError, ValidationError } from './errors.js'
import {
  type Aggregate,
  type DistributedRunSpec,
  type LogChunk,
  type LogLine,
  type LogStream,
  type Logs,
  type Quote,
  type RunList,
  type RunSpec,
  type RunState,
  type RunView,
  type ShardView,
  TERMINAL_RUN_STATES,
} from './types.js'

/** Seconds one request of a `wait()` asks the server to hold the answer (a long-poll). */
export const LONG_POLL_SECONDS = 20
/** The longest `wait` one long-poll may ask for (the server's limit). */
export const MAX_WAIT = 60
const MIN_WAIT = 0.05 // less time than this left: a plain GET

/** `wait({ timeout })` ran out before the run ended (the run keeps going). */
export class WaitTimeout extends Error {
  readonly runId: string
  readonly view: RunView

  constructor(message: string, runId: string, view: RunView) {
    super(message)
    this.name = 'WaitTimeout'
    this.runId = runId
    this.view = view
  }
}

function rule(field: string, ruleText: string, fix: string): ValidationError {
  return new ValidationError(`${field}: ${ruleText}. Fix: ${fix}`, {
    details: [{ field, rule: ruleText, fix }],
  })
}

function waitParams(wait: number): Record<string, string> {
  if (!(wait > 0 && wait <= MAX_WAIT)) {
    throw rule(
      'wait',
      `must be a number of seconds, 0 < wait <= ${MAX_WAIT} (got ${wait})`,
      `give e.g. wait: 30; to wait longer than ${MAX_WAIT}s, call wait()`,
    )
  }
  return { wait: String(wait) }
}

/** Whether a 422 is a server refusing the `wait` parameter itself (an older one). */
function refusesWait(err: ValidationError): boolean {
  return err.details.some((d) => d.field === 'wait' || d.field === 'query.wait') || err.message.startsWith('wait')
}

function sleep(seconds: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, seconds) * 1000))
}

/** A compressed index set, `"2,5,7-9"`, as the API takes it. */
export function compressIndices(indices: Iterable<number>): string {
  const sorted = [...new Set(indices)].sort((a, b) => a - b)
  const parts: string[] = []
  for (let i = 0; i < sorted.length; ) {
    let j = i
    while (j + 1 < sorted.length && sorted[j + 1] === (sorted[j] as number) + 1) j++
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`)
    i = j + 1
  }
  return parts.join(',')
}

function logParams(
  shard: number | 'merge',
  stream: LogStream,
  follow: boolean,
  attempt: number | undefined,
): Record<string, string | number | undefined> {
  if (stream !== 'stdout' && stream !== 'stderr') {
    throw rule('stream', `must be 'stdout' or 'stderr' (got ${JSON.stringify(stream)})`, 'pick one')
  }
  const where = shard === 'merge' ? { merge: 'true' } : { shard }
  return { ...where, stream, follow: follow ? 'true' : 'false', attempt }
}

/** The bytes of a response body as they come. */
async function* chunksOf(response: Response): AsyncGenerator<Uint8Array> {
  if (response.body === null) return
  const reader = response.body.getReader()
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) return
      if (value !== undefined) yield value
    }
  } finally {
    reader.releaseLock()
    await response.body.cancel().catch(() => {})
  }
}

/** The lines of a byte stream without their `\n`, cut there only (never at `\r`, U+2028
 * or U+0085, which a shard's output may hold); a `\r\n` ending loses its `\r` too. */
async function* linesOf(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder()
  let buffer = ''
  for await (const chunk of chunks) {
    buffer += decoder.decode(chunk, { stream: true })
    const end = buffer.lastIndexOf('\n')
    if (end < 0) continue
    for (const line of buffer.slice(0, end).split('\n')) yield line.replace(/\r$/, '')
    buffer = buffer.slice(end + 1)
  }
  buffer += decoder.decode()
  if (buffer) yield buffer.replace(/\r$/, '')
}

/** A handle on one submitted run; every method asks the control plane afresh. */
export class Run {
  readonly #config: ClientConfig
  #view: RunView
  #longPoll = true // until the server refuses `wait`

  constructor(config: ClientConfig, view: RunView) {
    this.#config = config
    this.#view = view
  }

  /** The run id, e.g. `wrk_01jd3x8q2m7k4f9a`. */
  get id(): string {
    return this.#view.id
  }

  /** The RunView last fetched (see {@link refresh}). */
  get view(): RunView {
    return this.#view
  }

  /** The status as of the last fetch. */
  get status(): RunState {
    return this.#view.status
  }

  /** Fetch the current RunView. With `wait` (seconds, 0 < wait <= 60) it is a long-poll:
   * answered as soon as the run is terminal, or after `wait` seconds with the view then. */
  async refresh(options: { wait?: number } = {}): Promise<RunView> {
    const wait = this.#longPoll ? options.wait : undefined
    const params = wait === undefined ? undefined : waitParams(wait)
    const timeout = wait === undefined ? undefined : this.#config.timeout + wait
    try {
      this.#view = await json<RunView>(request(this.#config, 'GET', runPath(this.id), { params, timeout }))
    } catch (err) {
      if (params === undefined || !(err instanceof ValidationError) || !refusesWait(err)) throw err
      this.#longPoll = false // an older server: plain GETs from now on
      return this.refresh()
    }
    return this.#view
  }

  /**
   * Wait until the run is terminal and resolve to its aggregate (`status`: succeeded,
   * partial, failed, cancelled or timed_out; `succeeded`, `failed`... shard counts).
   *
   * Each request is a long-poll the server answers as soon as the run ends. A restart of
   * the control plane meanwhile is ridden through: the requests are repeated (backoff up
   * to 5 s, within the config's `retry.timeout`, 60 s by default). `timeout` (seconds):
   * reject with {@link WaitTimeout} once it passes (the run keeps going); `pollInterval`
   * paces plain polling of a server without long-polls.
   */
  async wait(options: { timeout?: number; pollInterval?: number } = {}): Promise<Aggregate> {
    const { timeout, pollInterval = 0.5 } = options
    const deadline = timeout === undefined ? undefined : Date.now() + timeout * 1000
    for (;;) {
      const left = deadline === undefined ? LONG_POLL_SECONDS : (deadline - Date.now()) / 1000
      const asked = left >= MIN_WAIT ? Math.min(LONG_POLL_SECONDS, left) : undefined
      const started = Date.now()
      const view = await this.refresh({ wait: asked })
      if (TERMINAL_RUN_STATES.includes(view.status)) return view.aggregate
      const now = Date.now()
      if (deadline !== undefined && now >= deadline) {
        const agg = view.aggregate
        throw new WaitTimeout(
          `run ${this.id} is still ${view.status} after ${timeout}s (${agg.succeeded}/${agg.total} shards succeeded)`,
          this.id,
          view,
        )
      }
      // none after a long-poll that waited; pollInterval after a plain GET or an early answer
      if (asked !== undefined && (now - started) / 1000 >= asked / 2) continue
      let pause = pollInterval
      if (deadline !== undefined) pause = Math.min(pause, (deadline - now) / 1000)
      await sleep(pause)
    }
  }

  /** Every shard with its status, attempts, exit code and history, by index. */
  async shards(): Promise<ShardView[]> {
    const body = await json<unknown>(request(this.#config, 'GET', runPath(this.id, '/shards')))
    if (!Array.isArray(body)) throw new TransportError(`expected a JSON list of shards, got ${typeof body}`)
    return body as ShardView[]
  }

  /**
   * The captured output of one shard (`shard: 'merge'`: the merge step), its latest
   * attempt unless `attempt` (1-based) is given: `{ stdout, stderr }`. With `stream`,
   * only that stream is fetched (the other is '').
   */
  async logs(options: { shard: number | 'merge'; stream?: LogStream; attempt?: number }): Promise<Logs> {
    const { shard, stream, attempt } = options
    const out: Logs = { stdout: '', stderr: '' }
    for (const which of stream === undefined ? (['stdout', 'stderr'] as const) : [stream]) {
      const params = logParams(shard, which, false, attempt)
      out[which] = await (await request(this.#config, 'GET', runPath(this.id, '/logs'), { params })).response.text()
    }
    return out
  }

  /** One shard's output line by line (without newlines); with `follow` (default), until
   * the shard ends. Opening the stream is repeated as a read is; a stream cut once it
   * started is not (its lines would repeat): that rejects. */
  async *streamLogs(options: {
    shard: number | 'merge'
    stream?: LogStream
    follow?: boolean
    attempt?: number
  }): AsyncGenerator<string> {
    const { shard, stream = 'stdout', follow = true, attempt } = options
    const params = logParams(shard, stream, follow, attempt)
    const answer = await request(this.#config, 'GET', runPath(this.id, '/logs'), {
      params,
      streaming: true,
    })
    if (follow) answer.done() // a followed log may be silent for long
    try {
      yield* linesOf(chunksOf(answer.response))
    } finally {
      answer.done()
    }
  }

  /** Every shard's output line by line, interleaved as the lines come, in one response.
   * `indices` (`"0-3,7"` or a list): those shards only; `failed`: only shards that ended
   * failed or timed_out. With `follow` (default), until every shard has ended. */
  async *streamAllLogs(
    options: { stream?: LogStream; follow?: boolean; indices?: string | Iterable<number>; failed?: boolean } = {},
  ): AsyncGenerator<LogLine> {
    const { stream = 'stdout', follow = true, indices, failed = false } = options
    const params: Record<string, string | number | undefined> = logParams(0, stream, follow, undefined)
    delete params.shard
    params.all = 'true'
    if (indices !== undefined) params.indices = typeof indices === 'string' ? indices : compressIndices(indices)
    if (failed) params.failed = 'true'
    const answer = await request(this.#config, 'GET', runPath(this.id, '/logs'), { params, streaming: true })
    if (follow) answer.done()
    try {
      for await (const record of linesOf(chunksOf(answer.response))) {
        if (!record) continue
        let chunk: LogChunk
        try {
          chunk = JSON.parse(record) as LogChunk
        } catch {
          throw new TransportError(`unexpected log record from the server: ${record.slice(0, 200)}`)
        }
        const parts = chunk.data.split('\n')
        if (parts[parts.length - 1] === '') parts.pop()
        for (const line of parts) yield { shard: chunk.shard, attempt: chunk.attempt, line, ts: chunk.ts }
      }
    } finally {
      answer.done()
    }
  }

  /** Ask the control plane to cancel the run (it ends within seconds; see {@link wait}). */
  async cancel(): Promise<RunView> {
    this.#view = await RunsClient.cancel(this.#config, this.id)
    return this.#view
  }

  /** Run the unsuccessful indices of this ended run again, in the same run (`indices`:
   * `"2,5,7-9"` or a list; default every index that ended failed, timed_out or
   * cancelled). The run is queued again: {@link wait} for its new end. */
  async retry(indices?: string | Iterable<number>): Promise<RunView> {
    this.#view = await RunsClient.retry(this.#config, this.id, indices)
    return this.#view
  }

  /** Delete this ended run, its shards and logs (its usage stays on record). */
  async delete(): Promise<void> {
    await RunsClient.delete(this.#config, this.id)
  }

  toString(): string {
    return `Run(${this.id}, status=${this.status})`
  }
}

/** The wire body of a spec: undefined fields dropped; no image and no `workingDir`: the
 * caller's current directory, as the Python SDK and the CLI do. */
function wireSpec(spec: DistributedRunSpec): Record<string, unknown> {
  if (typeof spec !== 'object' || spec === null) {
    throw rule('spec', 'must be an object', "e.g. { command: ['python', 'train.py'] }")
  }
  if (typeof (spec as { command?: unknown }).command === 'string') {
    throw rule('command', 'must be an argv list', "e.g. ['python', 'train.py']")
  }
  const body: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(spec)) {
    if (value !== undefined) body[key] = value
  }
  if ((body.image === undefined || body.image === null) && body.workingDir === undefined) {
    body.workingDir = process.cwd()
  }
  return body
}

/** Submit and inspect runs. */
export class RunsClient {
  /** Submit a spec as it is (no defaults added). The request carries a fresh idempotency
   * key, so repeating it (a connection lost before the answer) never starts a second run. */
  static async submit(config: ClientConfig, body: Record<string, unknown>): Promise<Run> {
    const answer = request(config, 'POST', '/v1/runs', {
      body,
      headers: { 'Idempotency-Key': randomUUID().replace(/-/g, '') },
      idempotent: true,
    })
    return new Run(config, await json<RunView>(answer))
  }

  /**
   * Fan `spec.command` out to `spec.parallelism` indexed shards (each reads
   * `SYLPHX_SHARD_INDEX` / `SYLPHX_SHARD_COUNT`) and resolve to the run's handle.
   * The fields are the wire's (the product page's configuration reference); the server
   * validates them and fills defaults (a broken rule: ValidationError with `details`; a
   * plan budget: QuotaExceeded with `retryAfter`). With no `image`, the command runs on
   * the host in `workingDir` (default: the current directory).
   */
  static async runDistributed(config: ClientConfig, spec: DistributedRunSpec): Promise<Run> {
    return RunsClient.submit(config, wireSpec(spec))
  }

  /** Start a single-shard run (the N=1 case of {@link runDistributed}). */
  static async run(config: ClientConfig, spec: RunSpec): Promise<Run> {
    return RunsClient.submit(config, { ...wireSpec(spec), parallelism: 1 })
  }

  /** What a run of `spec` would cost and whether it would start now, from every check a
   * submit makes; nothing is stored (`POST /v1/runs?dryRun=true`). */
  static async quote(config: ClientConfig, spec: DistributedRunSpec): Promise<Quote> {
    return json<Quote>(
      request(config, 'POST', '/v1/runs', { body: wireSpec(spec), params: { dryRun: 'true' }, idempotent: true }),
    )
  }

  /** A handle on an existing run (NotFound for unknown ids). */
  static async get(config: ClientConfig, runId: string): Promise<Run> {
    return new Run(config, await json<RunView>(request(config, 'GET', runPath(runId))))
  }

  /** One page of runs, newest first; pass `nextCursor` as `cursor` for more. */
  static async list(
    config: ClientConfig,
    options: { status?: RunState; limit?: number; cursor?: string } = {},
  ): Promise<RunList> {
    const params = { limit: options.limit ?? 50, status: options.status, cursor: options.cursor }
    return json<RunList>(request(config, 'GET', '/v1/runs', { params }))
  }

  /** Request cancellation; the run becomes `cancelled` within seconds. */
  static async cancel(config: ClientConfig, runId: string): Promise<RunView> {
    return json<RunView>(request(config, 'POST', runPath(runId, '/cancel'), { idempotent: true }))
  }

  /** Reopen an ended run for `indices` (default: every failed, timed_out or cancelled
   * one). The request carries a fresh idempotency key: sent twice, it reopens once. */
  static async retry(config: ClientConfig, runId: string, indices?: string | Iterable<number>): Promise<RunView> {
    const body =
      indices === undefined ? {} : { indices: typeof indices === 'string' ? indices : compressIndices(indices) }
    return json<RunView>(
      request(config, 'POST', runPath(runId, '/retry'), {
        body,
        headers: { 'Idempotency-Key': randomUUID().replace(/-/g, '') },
        idempotent: true,
      }),
    )
  }

  /** Delete an ended run with its shards and logs (ConflictError while it has not ended). */
  static async delete(config: ClientConfig, runId: string): Promise<void> {
    await request(config, 'DELETE', runPath(runId))
  }
}
