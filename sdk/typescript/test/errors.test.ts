/** The error tree and the client's own checks: no server needed. */

import assert from 'node:assert/strict'
import { createServer } from 'node:net'
import { test } from 'node:test'

import {
  ConflictError,
  NotFound,
  QuotaExceeded,
  RunsClient,
  ServerUnavailable,
  SylphxError,
  TransportError,
  Unauthorized,
  ValidationError,
  compressIndices,
  createClient,
  errorFromBody,
} from '@sylphx/sdk'

test('an error body becomes the class its code names, with details', () => {
  const body = {
    error: 'validation_error',
    message: 'parallelism: must be between 1 and 256 (got 0). Fix: set parallelism ...',
    details: [{ field: 'parallelism', rule: 'must be between 1 and 256 (got 0)', fix: 'set parallelism' }],
  }
  const err = errorFromBody(422, body)
  assert.ok(err instanceof ValidationError && err instanceof SylphxError && err instanceof Error)
  assert.equal(err.name, 'ValidationError')
  assert.equal(err.code, 'validation_error')
  assert.equal(err.status, 422)
  assert.equal(err.details[0]?.field, 'parallelism')
  assert.ok(errorFromBody(404, { error: 'not_found', message: 'no run' }) instanceof NotFound)
  assert.ok(errorFromBody(401, { error: 'unauthorized', message: 'no key' }) instanceof Unauthorized)
  assert.ok(errorFromBody(409, { error: 'conflict', message: 'busy' }) instanceof ConflictError)
  const unknown = errorFromBody(500, { error: 'something_new', message: 'boom' })
  assert.equal(unknown.constructor, SylphxError)
  assert.ok(errorFromBody(502, '<html>bad gateway</html>') instanceof TransportError)
})

test('a 429 keeps its Retry-After as retryAfter', () => {
  const err = errorFromBody(429, { error: 'quota_exceeded', message: 'busy' }, 30)
  assert.ok(err instanceof QuotaExceeded)
  assert.equal(err.retryAfter, 30)
  const never = errorFromBody(429, { error: 'quota_exceeded', message: 'too big' })
  assert.ok(never instanceof QuotaExceeded)
  assert.equal(never.retryAfter, undefined)
})

test('createClient needs an http(s) URL; the token comes from SYLPHX_TOKEN', () => {
  const saved = { url: process.env.SYLPHX_URL, token: process.env.SYLPHX_TOKEN }
  try {
    delete process.env.SYLPHX_URL
    assert.throws(() => createClient(), (err: unknown) => err instanceof ValidationError && err.details[0]?.field === 'url')
    assert.throws(() => createClient('ftp://example'), ValidationError)
    process.env.SYLPHX_TOKEN = 'sx_from_env'
    assert.equal(createClient('http://127.0.0.1:1/').headers().Authorization, 'Bearer sx_from_env')
    assert.equal(createClient('http://127.0.0.1:1', { token: 'sx_given' }).headers().Authorization, 'Bearer sx_given')
    assert.equal(createClient('http://127.0.0.1:1/').baseUrl, 'http://127.0.0.1:1')
  } finally {
    for (const [key, value] of [['SYLPHX_URL', saved.url], ['SYLPHX_TOKEN', saved.token]] as const) {
      if (value === undefined) delete process.env[key]
      else process.env[key] = value
    }
  }
})

test('a command given as a string is refused before anything is sent', async () => {
  const config = createClient('http://127.0.0.1:1', { token: 'x', retry: { attempts: 1 } })
  await assert.rejects(
    RunsClient.runDistributed(config, { command: 'python train.py' as unknown as string[] }),
    (err: unknown) => err instanceof ValidationError && err.details[0]?.field === 'command',
  )
})

test('compressIndices writes the API index sets', () => {
  assert.equal(compressIndices([7, 2, 5, 8, 9, 2]), '2,5,7-9')
  assert.equal(compressIndices([]), '')
})

test('nothing listening: ServerUnavailable naming the URL and the fix, after the retries', async () => {
  const port = await new Promise<number>((done) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const address = probe.address()
      probe.close(() => done(typeof address === 'object' && address ? address.port : 0))
    })
  })
  const config = createClient(`http://127.0.0.1:${port}`, { token: 'x', retry: { attempts: 3 } })
  const started = Date.now()
  await assert.rejects(RunsClient.get(config, 'wrk_nothing'), (err: unknown) => {
    assert.ok(err instanceof ServerUnavailable, String(err))
    assert.match(err.message, new RegExp(`cannot reach the sylphx control plane at http://127.0.0.1:${port}`))
    assert.match(err.message, /ECONNREFUSED/)
    assert.match(err.message, /Fix: start `sylphx server` there/)
    return true
  })
  assert.ok(Date.now() - started >= 250, 'a refused connection is tried again (0.1 s, then 0.2 s, plus jitter)')
})
