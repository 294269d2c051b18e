/**
 * The product page's example, examples/train-distributed.ts (copied verbatim but for the
 * image: unset, the local executor runs the command on this host), run as a program
 * against the server under test. Its train.py fails folds 2 and 5 on every attempt.
 */

import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { test } from 'node:test'

import { RunsClient, VolumesClient } from '@sylphx/sdk'

import { PACKAGE, client, noServer } from './helpers.js'

test('the page example: 9 shards, 2 fail after their retries, the partial aggregate', { skip: noServer, timeout: 240_000 }, async () => {
  const config = client()
  const volume = await VolumesClient.create(config, { name: 'cache' })
  const env: Record<string, string | undefined> = { ...process.env, CACHE_VOLUME_ID: volume.id }
  delete env.TRAINER_IMAGE
  const started = Date.now()
  const result = spawnSync(
    process.execPath,
    ['--import', join(PACKAGE, 'dist', 'test', 'fast-retries.js'), join(PACKAGE, 'dist', 'examples', 'train-distributed.js')],
    { cwd: join(PACKAGE, 'examples'), env, encoding: 'utf8', timeout: 230_000 },
  )
  const seconds = ((Date.now() - started) / 1000).toFixed(1)
  console.log(`# the example ran in ${seconds}s; its stdout:\n${result.stdout}# its stderr:\n${result.stderr}`)
  assert.equal(result.status, 0, result.stderr)
  assert.match(result.stderr, /^2\/9 shards failed$/m)
  // the first failed shard's stderr, drilled into with run.logs({ shard })
  assert.match(result.stderr, /^fold 2: no price history for SYM002; cannot train$/m)
  assert.match(result.stdout, /^Aggregate status: partial — succeeded: 7$/m)

  const [run] = (await RunsClient.list(config, { limit: 1 })).items
  assert.ok(run !== undefined)
  assert.equal(run.spec.backoffLimitPerIndex, 12)
  assert.equal(run.spec.machine, 'large')
  assert.equal(run.spec.gangScheduling, false)
  assert.deepEqual(run.spec.volumeMounts, [{ volumeId: volume.id, mountPath: '/cache' }])
  const handle = await RunsClient.get(config, run.id)
  const shards = await handle.shards()
  assert.deepEqual(
    shards.filter((s) => s.status === 'failed').map((s) => [s.index, s.attempts, s.exitCode]),
    [
      [2, 13, 1],
      [5, 13, 1],
    ],
  )
  assert.ok(shards.filter((s) => s.status === 'succeeded').every((s) => s.attempts === 1))
  const fold5 = await handle.logs({ shard: 5 })
  assert.equal(fold5.stdout, 'fold 5: loading 10 symbols\n')
  assert.match(fold5.stderr, /fold 5: no price history for SYM005/)
  const first = await handle.logs({ shard: 5, stream: 'stdout', attempt: 1 })
  assert.deepEqual(first, { stdout: 'fold 5: loading 10 symbols\n', stderr: '' })
  const fold3 = await handle.logs({ shard: 3 })
  assert.equal(fold3.stdout, 'fold 3: trained on 10 symbols -> /cache/scores-3.json\n')
})
