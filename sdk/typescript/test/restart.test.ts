/**
 * wait() rides through a restart of the control plane. The pytest wrapper watches
 * $SYLPHX_TEST_RESTART_DIR: once this test writes `waiting` there (wait() pending on a
 * running shard), it stops the server, writes `stopped`, starts it again on the same home
 * and port, and writes `restarted`. The shard outlives the control plane, and wait()
 * resolves to its end.
 */

import assert from 'node:assert/strict'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'

import { RunsClient } from '@sylphx/sdk'

import { client, noServer } from './helpers.js'

const DIR = process.env.SYLPHX_TEST_RESTART_DIR

test('wait() survives a restart of the server', { skip: noServer || (DIR ? false : 'no SYLPHX_TEST_RESTART_DIR'), timeout: 240_000 }, async () => {
  const dir = DIR as string
  // count what the platform's fetch went through: refused connections and 503s while the
  // server was away, each repeated by the SDK
  const seen = { refused: 0, unavailable: 0 }
  const counting: typeof fetch = async (input, init) => {
    try {
      const response = await fetch(input, init)
      if (response.status === 503) seen.unavailable++
      return response
    } catch (err) {
      seen.refused++
      throw err
    }
  }
  // the default policy (10 tries, waits doubling to 5 s) rides through ~20-30 s away; a
  // machine busy with other work may take longer to start the server again
  const config = client({ fetch: counting, retry: { attempts: 40, timeout: 180 } })
  const run = await RunsClient.run(config, { command: ['sh', '-c', 'sleep 8; echo done'], machine: 'nano' })
  const waiting = run.wait({ timeout: 200 })
  writeFileSync(join(dir, 'waiting'), run.id)
  const aggregate = await waiting
  assert.ok(existsSync(join(dir, 'stopped')), 'the server was stopped while wait() was pending')
  assert.ok(existsSync(join(dir, 'restarted')), 'and started again before wait() resolved')
  assert.deepEqual([aggregate.status, aggregate.succeeded], ['succeeded', 1])
  console.log(`# while the server was away: ${seen.refused} failed fetches, ${seen.unavailable} 503s`)
  assert.ok(seen.refused + seen.unavailable > 0, 'wait() met the restart and repeated its requests')
  assert.equal((await run.logs({ shard: 0 })).stdout, 'done\n')
})
