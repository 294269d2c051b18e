import { RunsClient, createClient } from '@sylphx/sdk'

const config = createClient(process.env.SYLPHX_URL!)

const folds = [0, 1, 2, 3, 4, 5, 6, 7, 8]

// One distributed job — the platform fans it out to 9 indexed shards.
const run = await RunsClient.runDistributed(config, {
  image: process.env.TRAINER_IMAGE,
  // The container reads SYLPHX_SHARD_INDEX / SYLPHX_SHARD_COUNT to pick its fold.
  command: ['python', 'train.py'],
  parallelism: folds.length,
  machine: 'large',
  // Optional: use low-priority spare capacity and tolerate preemptions.
  gangScheduling: false,
  backoffLimitPerIndex: 12,
  // A ReadWriteMany volume mounted into every shard is the result-merge convention.
  volumeMounts: [{ volumeId: process.env.CACHE_VOLUME_ID!, mountPath: '/cache' }],
  timeoutSeconds: 7200,
})

// .wait() resolves once the aggregate reaches a terminal state
// (succeeded | failed | partial | cancelled | timed_out).
const status = await run.wait()

const shards = await run.shards()
const failures = shards.filter((s) => s.status === 'failed')
if (failures.length > 0) {
  console.error(`${failures.length}/${shards.length} shards failed`)
  // Drill into one shard's logs:
  const { stdout, stderr } = await run.logs({ shard: failures[0].index })
  console.error(stderr)
}
console.log('Aggregate status:', status.status, '— succeeded:', status.succeeded)
