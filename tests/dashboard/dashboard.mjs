// Drives the walcast dashboard (src/dashboard/index.html) in headless Chromium; run by
// tests/dashboard.rs.
//
// Protocol with the Rust test (the same as tests/realtime_js): every observation is one JSON
// object per line on stdout; `{"ready":"<what>"}` means "insert the rows for <what> now", and the
// script then waits for one line (`go`) on stdin. `{"done":true}` ends a good run; `{"fail":..}` or
// `{"timeout":..}` a bad one. Diagnostics (browser console, page errors) go to stderr.
//
// Environment: DASHBOARD_URL (the page, with ?apikey=), SCREENSHOT (PNG path), CHROMIUM
// (default /usr/bin/chromium), WALCAST_JS_TIMEOUT_MS (whole-run watchdog, default 120000).

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { chromium } from 'playwright-core'

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const log = (...a) => process.stderr.write(a.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join(' ') + '\n')

let context = null
let userDataDir = null
let currentWait = 'start'

/** Closes the browser and removes its profile; bounded so a stuck browser cannot hang us. */
async function cleanup() {
  const c = context
  context = null
  if (c) await Promise.race([c.close().catch(() => {}), new Promise((r) => setTimeout(r, 5000))])
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true })
}
async function fail(message) {
  out({ fail: String(message), waiting_for: currentWait })
  await cleanup()
  process.exit(1)
}
function env(name) {
  const v = process.env[name]
  if (!v) {
    out({ fail: `missing environment variable ${name}` })
    process.exit(1)
  }
  return v
}

const deadline = Number(process.env.WALCAST_JS_TIMEOUT_MS || 120000)
setTimeout(async () => {
  out({ timeout: deadline, waiting_for: currentWait })
  await cleanup()
  process.exit(3)
}, deadline).unref()
process.on('unhandledRejection', (e) => fail(`unhandled rejection: ${e?.stack || e}`))
process.on('uncaughtException', (e) => fail(`uncaught exception: ${e?.stack || e}`))

// stdin: one command per line from the Rust test.
const lines = []
const waiters = []
createInterface({ input: process.stdin }).on('line', (l) => {
  const w = waiters.shift()
  if (w) w(l.trim())
  else lines.push(l.trim())
})
async function ready(what) {
  out({ ready: what })
  currentWait = `go after ${what}`
  const l = lines.length ? lines.shift() : await new Promise((r) => waiters.push(r))
  currentWait = null
  if (l !== 'go') await fail(`expected go, got ${l}`)
}

const url = env('DASHBOARD_URL')
const shot = env('SCREENSHOT')
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium'

userDataDir = mkdtempSync(path.join(tmpdir(), 'walcast-dashboard-chromium-'))
currentWait = 'chromium launch'
context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  viewport: { width: 1440, height: 1000 },
  colorScheme: 'light',
  timeout: 30000,
})
const page = context.pages()[0] ?? (await context.newPage())
page.setDefaultTimeout(30000)
const pageErrors = []
page.on('pageerror', (e) => { pageErrors.push(String(e)); log('pageerror:', String(e)) })
page.on('console', (m) => log(`console.${m.type()}:`, m.text()))

/** Waits for a condition in the page, naming it in timeouts. */
async function waitFor(what, fn, arg) {
  currentWait = what
  await page.waitForFunction(fn, arg, { timeout: 30000, polling: 50 })
  currentWait = null
}
const pathState = (name, state) =>
  waitFor(`${name} ${state}`, ([n, s]) => document.getElementById('path-' + n)?.dataset.state === s, [name, state])

/** The table's rows as the user sees them. */
const rows = () =>
  page.$$eval('#rows tr', (trs) =>
    trs.map((tr) => ({
      path: tr.dataset.path,
      op: tr.querySelector('.op')?.textContent,
      event_type: tr.querySelector('td.et')?.textContent,
      source: tr.querySelector('td.src')?.textContent,
      latency: tr.querySelector('td.lat')?.textContent,
      visible: tr.getBoundingClientRect().height > 0 && getComputedStyle(tr).visibility !== 'hidden',
    })),
  )
/** Waits until the table shows `n` rows of `eventType` (on `path`, if given). */
const waitRows = (eventType, path, n) =>
  waitFor(
    `${n} ${eventType} rows via ${path ?? 'any path'}`,
    ([t, p, k]) =>
      [...document.querySelectorAll('#rows tr')].filter(
        (tr) => tr.querySelector('td.et')?.textContent === t && (!p || tr.dataset.path === p),
      ).length >= k,
    [eventType, path, n],
  )
const text = (sel) => page.$eval(sel, (e) => e.textContent.trim())

// 1. Load: auto source → the first path of /v1/flags/evaluate (dual mode, use_realtime off: plain).
currentWait = 'page load'
await page.goto(url, { waitUntil: 'load' })
await page.evaluate(() => { window.__dashboardMarker = 'kept' })
await pathState('direct', 'connected')
await waitFor('flags rendered', () => document.querySelectorAll('#flags-rows tr[data-flag]').length > 0)
out({
  step: 'loaded',
  address_has_apikey: new URL(page.url()).searchParams.has('apikey'),
  paths: await page.evaluate(() => window.walcastDashboard.paths()),
  mode: await text('#mode'),
  node: await text('#node'),
  flags: await page.$$eval('#flags-rows tr[data-flag]', (trs) => trs.map((t) => t.dataset.flag)),
  source_checked: await page.$eval('input[name=source]:checked', (e) => e.value),
})

await ready('plain')
await waitRows('dash.plain', 'direct', 3)
out({ step: 'plain', rows: (await rows()).filter((r) => r.event_type === 'dash.plain') })

// 2. Switch to Realtime without reloading.
await page.check('#source-realtime')
await pathState('realtime', 'connected')
await pathState('direct', 'off')
out({
  step: 'switched',
  marker: await page.evaluate(() => window.__dashboardMarker ?? null),
  navigations: await page.evaluate(() => performance.getEntriesByType('navigation').length),
  paths: await page.evaluate(() => window.walcastDashboard.paths()),
})
await ready('realtime')
await waitRows('dash.rt', 'realtime', 3)
out({ step: 'realtime', rows: (await rows()).filter((r) => r.event_type === 'dash.rt') })

// 3. Both paths, with an event_type filter applied to both.
await page.check('#source-both')
await page.fill('#f-type', 'dash.filtered')
await page.click('#filter-apply')
await pathState('direct', 'connected')
await pathState('realtime', 'connected')
await ready('both')
// The Rust side commits the dash.other rows before the dash.filtered ones: once the filtered rows
// are here on a path, anything unfiltered would already have arrived on it (commit order).
await waitRows('dash.filtered', 'direct', 2)
await waitRows('dash.filtered', 'realtime', 2)
out({ step: 'both', rows: await rows() })

// 4. Settings persist across a reload.
await page.click('#settings-toggle')
await page.fill('#subject', 'user-dash-1')
await page.fill('#segments', 'beta')
await page.click('#settings-form button[type=submit]')
await waitFor('flags for user-dash-1', () => document.getElementById('route').textContent.includes('user-dash-1'))
currentWait = 'reload'
await page.reload({ waitUntil: 'load' })
await pathState('direct', 'connected')
await pathState('realtime', 'connected')
out({
  step: 'reloaded',
  marker: await page.evaluate(() => window.__dashboardMarker ?? null),
  address_has_apikey: new URL(page.url()).searchParams.has('apikey'),
  settings: await page.evaluate(() => window.walcastDashboard.settings()),
  inputs: {
    subject: await page.inputValue('#subject'),
    segments: await page.inputValue('#segments'),
    apikey_set: (await page.inputValue('#apikey')).length > 0,
    event_type: await page.inputValue('#f-type'),
  },
  source_checked: await page.$eval('input[name=source]:checked', (e) => e.value),
})

// 5. walcast is killed and restarted: both paths reconnect on their own, and the plain path
// resumes from its last cursor, so rows committed while walcast was down still arrive, once.
await page.click('#filter-clear')
await pathState('direct', 'connected')
await pathState('realtime', 'connected')
await ready('cursor')
await waitRows('dash.before', 'direct', 1)
await ready('restart')
await waitFor('a reconnect', () => document.getElementById('path-direct').dataset.state !== 'connected' ||
  document.getElementById('path-direct').textContent.includes('resumed'))
await waitRows('dash.resume', 'direct', 3)
await pathState('direct', 'connected')
await pathState('realtime', 'connected')
out({
  step: 'resumed',
  rows: (await rows()).filter((r) => r.event_type === 'dash.resume'),
  direct_status: await text('#path-direct'),
})

// 6. A fuller page for the screenshot: a burst of varied rows on both paths.
await ready('screenshot')
await waitRows('http.request', 'direct', 6)
await waitRows('http.request', 'realtime', 6)
await page.waitForTimeout(1200) // one chart tick after the last row
// /v1/status (polled every 2 s) counts this page's two sessions, or says n/a without the endpoint.
await waitFor('clients from /v1/status', () => {
  const t = document.getElementById('kpi-clients').textContent.trim()
  return t === 'n/a' || Number(t.replace(/,/g, '')) >= 2
})
const status = {
  clients: await text('#kpi-clients'),
  slot_lag: await text('#kpi-lag'),
  consistency: await text('#kpi-consistency'),
  clients_sub: await text('#kpi-clients-sub'),
  slot_lag_sub: await text('#kpi-lag-sub'),
  server_card: await text('#status-body'),
  rate: await text('#kpi-rate'),
  latency: await text('#kpi-latency'),
}
mkdirSync(path.dirname(shot), { recursive: true })
currentWait = 'screenshot'
await page.screenshot({ path: shot, fullPage: true })
out({ step: 'screenshot', path: shot, status, row_count: (await rows()).length, page_errors: pageErrors })
await cleanup()
out({ done: true })
process.exit(0)
