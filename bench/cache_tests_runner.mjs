// Runs the http-cache-tests suite (the npm package pinned in bench/package.json) through one
// cache under test, the way the package's own cli.mjs does (same runner, same test list, plus
// the surrogate-control tests), with two additions: every request has a timeout, so a cache that
// hangs fails a test instead of hanging the run, and the test metadata is printed with the
// results so bench/cache_conformance.py can classify them.
//
// usage: node cache_tests_runner.mjs PACKAGE_DIR BASE_URL [TEST_ID]
// CONCURRENCY in the environment sets how many tests run at once (the suite's default, 100).
// The last line of stdout is JSON: {"tests": [...], "results": {...}}. With TEST_ID only that
// test runs, and the suite first prints the requests and responses it saw (for debugging).
import { createRequire } from 'node:module'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const REQUEST_TIMEOUT_MS = 15000
const [packageDir, baseUrl, testId] = process.argv.slice(2)
if (!packageDir || !baseUrl) {
  console.error('usage: node cache_tests_runner.mjs PACKAGE_DIR BASE_URL [TEST_ID]')
  process.exit(2)
}
const host = new URL(baseUrl).hostname
if (!(host === 'localhost' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host))) {
  console.error(`refusing non-loopback base URL ${baseUrl}`)
  process.exit(2)
}

const load = async relative => import(pathToFileURL(path.join(packageDir, relative)).href)
const { runTests, getResults } = await load('client/runner.mjs')
const suites = (await load('tests/index.mjs')).default
suites.push((await load('tests/surrogate-control.mjs')).default)
const fetch = createRequire(path.join(packageDir, 'package.json'))('node-fetch')
const timedFetch = (url, init = {}) => fetch(url, { ...init, timeout: REQUEST_TIMEOUT_MS })

const metadata = []
let toRun = suites
for (const suite of suites) {
  for (const test of suite.tests) {
    metadata.push({
      suite: suite.id,
      suite_name: suite.name,
      id: test.id,
      name: test.name,
      kind: test.kind || 'required',
      depends_on: test.depends_on || [],
      browser_only: test.browser_only === true,
      browser_skip: test.browser_skip === true
    })
    if (test.id === testId) {
      test.dump = true
      toRun = [{ ...suite, tests: [test] }]
    }
  }
}
if (testId && toRun === suites) {
  console.error(`no test with id ${testId}`)
  process.exit(2)
}

const concurrency = parseInt(process.env.CONCURRENCY || '100', 10)
await runTests(toRun, timedFetch, false, baseUrl.replace(/\/$/, ''), concurrency)
console.log(JSON.stringify({ tests: metadata, results: getResults() }))
