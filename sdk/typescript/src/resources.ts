/** Volumes, usage and secrets (mirrors the Python SDK's `async_resources`). */

import { type ClientConfig, json, request } from './client.js'
import type { OrgView, SecretView, UsageReport, VolumeView } from './types.js'

/** Create, list and delete the ReadWriteMany volumes runs mount. */
export class VolumesClient {
  /** Create a volume; mount it with `volumeMounts: [{ volumeId: v.id, mountPath: '/cache' }]`. */
  static async create(config: ClientConfig, options: { name?: string } = {}): Promise<VolumeView> {
    return json<VolumeView>(request(config, 'POST', '/v1/volumes', { body: { name: options.name ?? null } }))
  }

  /** Every volume. */
  static async list(config: ClientConfig): Promise<VolumeView[]> {
    return json<VolumeView[]>(request(config, 'GET', '/v1/volumes'))
  }

  /** Delete a volume (ConflictError while a live run mounts it). */
  static async delete(config: ClientConfig, volumeId: string): Promise<void> {
    await request(config, 'DELETE', `/v1/volumes/${encodeURIComponent(volumeId)}`)
  }
}

/** The caller's org, its limits, and its metered compute-seconds. */
export class UsageClient {
  /** The org behind the API key, with its plan limits and shards in use. */
  static async org(config: ClientConfig): Promise<OrgView> {
    return json<OrgView>(request(config, 'GET', '/v1/org'))
  }

  /** Compute-seconds by run and tier over `[from, to)` (default: this month), credits
   * applied first, and the billable remainder. */
  static async report(config: ClientConfig, options: { from?: Date; to?: Date } = {}): Promise<UsageReport> {
    const params = { from: options.from?.toISOString(), to: options.to?.toISOString() }
    return json<UsageReport>(request(config, 'GET', '/v1/usage', { params }))
  }
}

/** The org's scoped secrets: runs name them in `secrets: [...]` to get them as env vars. */
export class SecretsClient {
  /** Create or replace a secret (its value is never returned). */
  static async set(config: ClientConfig, name: string, value: string): Promise<SecretView> {
    return json<SecretView>(request(config, 'POST', '/v1/secrets', { body: { name, value }, idempotent: true }))
  }

  /** Names and times of every secret. */
  static async list(config: ClientConfig): Promise<SecretView[]> {
    return json<SecretView[]>(request(config, 'GET', '/v1/secrets'))
  }

  /** Delete a secret; runs that name it can no longer start. */
  static async delete(config: ClientConfig, name: string): Promise<void> {
    await request(config, 'DELETE', `/v1/secrets/${encodeURIComponent(name)}`)
  }
}
