/** The SDK's surface against the server under test: errors as typed classes (a 429 with
 * retryAfter, a broken rule with its field and fix), one run followed through its handle,
 * a retry, a merge step, volumes, usage. */

import assert from 'node:assert/strict'
import { test } from 'node:test'

import {
  NotFound,
  QuotaExceeded,
  RunsClient,
  type ShardView,
  Unauthorized,
  UsageClient,
  ValidationError,
  VolumesClient,
  WaitTimeout,
} from '@sylphx/sdk'

import { client, noServer } from './helpers.js'

const SMALL = process.env.SYLPHX_TEST_SMALL_TOKEN // an org on a plan with 1 concurrent shard

test('a 429 surfaces as QuotaExceeded with retryAfter and the limit it hit', { skip: noServer || (SMALL ? false : 'no SYLPHX_TEST_SMALL_TOKEN') }, async () => {
  const small = client({ token: SMALL })
  const org = await UsageClient.org(small)
  assert.equal(org.concurrentShards, 1)
  const busy = await RunsClient.run(small, { command: ['sleep', '60'], machine: 'nano' })
  try {
    await assert.rejects(RunsClient.run(small, { command: ['true'], machine: 'nano' }), (err: unknown) => {
      assert.ok(err instanceof QuotaExceeded, String(err))
      assert.equal(err.status, 429)
      assert.equal(err.retryAfter, 30) // the Retry-After header: waiting helps
      assert.equal(err.details[0]?.limit, 'orgConcurrentShards')
      assert.match(err.message, /has 1 of its 1 concurrent shards in use .* Fix: wait for 1 running shard/)
      return true
    })
    // over the per-job ceiling: waiting never helps, so no retryAfter
    await assert.rejects(RunsClient.runDistributed(small, { command: ['true'], parallelism: 2 }), (err: unknown) => {
      assert.ok(err instanceof QuotaExceeded, String(err))
      assert.equal(err.retryAfter, undefined)
      assert.equal(err.details[0]?.limit, 'perJobParallelism')
      assert.equal(err.details[0]?.field, 'parallelism')
      return true
    })
    const quote = await RunsClient.quote(small, { command: ['true'] })
    assert.equal(quote.verdict, 'refused')
    assert.equal(quote.error?.error, 'quota_exceeded')
  } finally {
    await busy.cancel()
  }
  assert.equal((await busy.wait({ timeout: 30 })).status, 'cancelled')
})

test('a broken rule is a ValidationError naming the field, the rule and the fix', { skip: noServer }, async () => {
  const config = client()
  await assert.rejects(
    RunsClient.runDistributed(config, { command: ['python', 'train.py'], parallelism: 3, backoffLimitPerIndex: 12 }),
    (err: unknown) => {
      assert.ok(err instanceof ValidationError, String(err))
      assert.equal(err.status, 422)
      const [detail] = err.details
      assert.equal(detail?.field, 'backoffLimitPerIndex')
      assert.equal(detail?.rule, 'requires gangScheduling: false (opportunistic runs only)')
      assert.match(String(detail?.fix), /set gangScheduling: false/)
      assert.match(err.message, /^backoffLimitPerIndex: requires gangScheduling: false .* Fix: set gangScheduling: false/)
      return true
    },
  )
  await assert.rejects(RunsClient.runDistributed(config, { command: ['true'], parallelism: 300 }), (err: unknown) => {
    assert.ok(err instanceof ValidationError)
    assert.equal(err.details[0]?.field, 'parallelism')
    assert.match(String(err.details[0]?.fix), /shard count from 1 to 256/)
    return true
  })
  const run = await RunsClient.run(config, { command: ['true'], machine: 'nano' })
  await assert.rejects(run.refresh({ wait: 61 }), (err: unknown) => err instanceof ValidationError && err.details[0]?.field === 'wait')
  await assert.rejects(RunsClient.get(config, 'wrk_doesnotexist'), NotFound)
  await assert.rejects(RunsClient.list(client({ token: 'sx_not_a_key' })), Unauthorized)
})

test('one run through its handle: wait, refresh, shards, logs, streams, list, delete', { skip: noServer }, async () => {
  const config = client()
  const run = await RunsClient.runDistributed(config, {
    command: ['sh', '-c', 'echo "shard $SYLPHX_SHARD_INDEX of $SYLPHX_SHARD_COUNT"; echo oops >&2'],
    parallelism: 3,
    machine: 'nano',
  })
  assert.match(run.id, /^wrk_/)
  assert.ok(['queued', 'running'].includes(run.status))
  const aggregate = await run.wait({ timeout: 60 })
  assert.deepEqual([aggregate.status, aggregate.succeeded, aggregate.total], ['succeeded', 3, 3])
  assert.equal((await run.refresh()).status, 'succeeded')
  assert.equal(run.view.spec.gangScheduling, true) // the server's default, filled in
  const shards: ShardView[] = await run.shards()
  assert.deepEqual(shards.map((s) => [s.index, s.status, s.exitCode]), [[0, 'succeeded', 0], [1, 'succeeded', 0], [2, 'succeeded', 0]])
  assert.deepEqual(await run.logs({ shard: 1 }), { stdout: 'shard 1 of 3\n', stderr: 'oops\n' })
  assert.deepEqual(await run.logs({ shard: 2, stream: 'stderr' }), { stdout: '', stderr: 'oops\n' })
  const lines: string[] = []
  for await (const line of run.streamLogs({ shard: 0 })) lines.push(line)
  assert.deepEqual(lines, ['shard 0 of 3'])
  const all: string[] = []
  for await (const line of run.streamAllLogs({ follow: false })) all.push(`${line.shard}:${line.attempt}:${line.line}`)
  assert.deepEqual(all.sort(), ['0:1:shard 0 of 3', '1:1:shard 1 of 3', '2:1:shard 2 of 3'])
  const page = await RunsClient.list(config, { status: 'succeeded', limit: 100 })
  assert.ok(page.items.some((r) => r.id === run.id))
  // Delete it once a later run exists. (On SQLite, deleting the newest run lets its
  // attempts' ids be handed out again, and the next run's usage rows then collide with the
  // deleted one's, failing that run: a server bug, not this SDK's to show.)
  const later = await RunsClient.run(config, { command: ['true'], machine: 'nano' })
  assert.equal((await later.wait({ timeout: 60 })).status, 'succeeded')
  await run.delete()
  await assert.rejects(RunsClient.get(config, run.id), NotFound)
})

test('wait({ timeout }) rejects with WaitTimeout and the run goes on; cancel ends it', { skip: noServer }, async () => {
  const config = client()
  const run = await RunsClient.run(config, { command: ['sleep', '60'], machine: 'nano' })
  const started = Date.now()
  await assert.rejects(run.wait({ timeout: 1 }), (err: unknown) => err instanceof WaitTimeout && err.runId === run.id)
  assert.ok(Date.now() - started < 10_000)
  await run.cancel()
  assert.equal((await run.wait({ timeout: 30 })).status, 'cancelled')
})

test('retry reruns the failed indices; a merge step runs once the shards ended', { skip: noServer }, async () => {
  const config = client()
  const volume = await VolumesClient.create(config, { name: 'merge' })
  // shard 1 fails until a retry finds the marker the first attempt left in the volume
  const script =
    'i=$SYLPHX_SHARD_INDEX; echo "$i" > /out/part-$i; ' +
    'if [ "$i" = 1 ] && [ ! -e /out/again ]; then touch /out/again; exit 3; fi'
  const run = await RunsClient.runDistributed(config, {
    command: ['sh', '-c', script],
    parallelism: 3,
    machine: 'nano',
    gangScheduling: false,
    backoffLimitPerIndex: 0,
    volumeMounts: [{ volumeId: volume.id, mountPath: '/out' }],
    merge: { command: ['sh', '-c', 'cat /out/part-* | sort | tr "\\n" " "'], when: 'always' },
  })
  const first = await run.wait({ timeout: 60 })
  assert.deepEqual([first.status, first.succeeded, first.failed], ['partial', 2, 1])
  assert.equal((await run.logs({ shard: 'merge' })).stdout, '0 1 2 ')
  await run.retry([1])
  const second = await run.wait({ timeout: 60 })
  assert.deepEqual([second.status, second.succeeded], ['succeeded', 3])
  assert.equal(run.view.reopened, 1)
  const shard1 = (await run.shards())[1]
  assert.deepEqual([shard1?.status, shard1?.attempts], ['succeeded', 2])
  assert.ok((await VolumesClient.list(config)).some((v) => v.id === volume.id))
  const usage = await UsageClient.report(config)
  assert.ok(usage.computeSeconds >= 0 && typeof usage.billableSeconds === 'number')
})
