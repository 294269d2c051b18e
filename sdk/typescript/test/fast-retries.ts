/**
 * Preloaded (`node --import`) by example.test.ts only, before the page's example runs.
 *
 * The example asks for `backoffLimitPerIndex: 12`; with the server's default retry
 * backoff (1 s doubling to 60 s) a fold that fails on every attempt keeps retrying for
 * about 7 minutes before its shard ends failed. This wraps the platform's fetch to add
 * `retryBackoff: { initialSeconds: 0 }` to the spec the example submits (and nothing
 * else), so the 12 retries of each failing fold run back to back: the example's own
 * source and every other field of its spec are sent unchanged.
 */

const platform = globalThis.fetch

globalThis.fetch = (input, init) => {
  const target = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url
  if (init?.method === 'POST' && new URL(target).pathname === '/v1/runs' && typeof init.body === 'string') {
    const spec = JSON.parse(init.body) as Record<string, unknown>
    if (spec.retryBackoff === undefined) spec.retryBackoff = { initialSeconds: 0 }
    return platform(input, { ...init, body: JSON.stringify(spec) })
  }
  return platform(input, init)
}
