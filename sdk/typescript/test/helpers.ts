/** What the tests share: the control plane under test, from the environment the pytest
 * wrapper (tests/test_typescript_sdk.py) sets. Without SYLPHX_URL the tests that need a
 * server are skipped. */

import { fileURLToPath } from 'node:url'
import { dirname, resolve } from 'node:path'

import { type ClientConfig, type ClientOptions, createClient } from '@sylphx/sdk'

/** The package's root (dist/test/ -> ../..). */
export const PACKAGE = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')

/** Why a test that needs a server is skipped, or false when one is there. */
export const noServer: string | false = process.env.SYLPHX_URL
  ? false
  : 'no SYLPHX_URL: run through tests/test_typescript_sdk.py (make test)'

/** A client of the server under test: the enterprise org's key, or `token`. */
export function client(options: ClientOptions = {}): ClientConfig {
  return createClient(process.env.SYLPHX_URL, options)
}

export function sleep(seconds: number): Promise<void> {
  return new Promise((done) => setTimeout(done, seconds * 1000))
}
