// Shared helpers for the realtime-js scenario scripts (driven by tests/realtime_js.rs).
//
// Protocol with the Rust test: every observation is one JSON object per line on stdout; the
// script says `{"ready":"<what>"}` when the Rust side should act, and reads commands (one line
// each, usually `go`) from stdin. Diagnostics go to stderr. A script that has not finished
// within WALCAST_JS_TIMEOUT_MS exits with status 3 after printing `{"timeout":...}`.

import { createInterface } from 'node:readline'
import WebSocket from 'ws'
import { RealtimeClient } from '@supabase/realtime-js'

/** Reads a required environment variable. */
export function env(name) {
  const v = process.env[name]
  if (v === undefined || v === '') {
    fail(`missing environment variable ${name}`)
  }
  return v
}

/** Prints one observation. */
export function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

/** Prints a diagnostic. */
export function log(...args) {
  process.stderr.write(args.map((a) => (typeof a === 'string' ? a : JSON.stringify(a))).join(' ') + '\n')
}

/** Reports a failure and exits with status 1. */
export function fail(message) {
  out({ fail: String(message) })
  process.exit(1)
}

const deadline = Number(process.env.WALCAST_JS_TIMEOUT_MS || 20000)
const watchdog = setTimeout(() => {
  out({ timeout: deadline, waiting_for: currentWait })
  process.exit(3)
}, deadline)
watchdog.unref()
let currentWait = null

process.on('unhandledRejection', (e) => fail(`unhandled rejection: ${e?.stack || e}`))
process.on('uncaughtException', (e) => fail(`uncaught exception: ${e?.stack || e}`))

// stdin commands, one per line.
const lines = []
const lineWaiters = []
createInterface({ input: process.stdin }).on('line', (line) => {
  const w = lineWaiters.shift()
  if (w) w(line.trim())
  else lines.push(line.trim())
})

/** The next command line from the Rust test. */
export function command() {
  const l = lines.shift()
  if (l !== undefined) return Promise.resolve(l)
  return new Promise((resolve) => lineWaiters.push(resolve))
}

/** Says `ready` and waits for `go` (or any other command, which is returned). */
export async function ready(what) {
  out({ ready: what })
  currentWait = `command after ready ${what}`
  const c = await command()
  currentWait = null
  return c
}

/** Resolves once `cond()` is true (checked every 10 ms); `what` is reported on timeout. */
export async function until(what, cond) {
  currentWait = what
  while (!cond()) {
    await new Promise((r) => setTimeout(r, 10))
  }
  currentWait = null
}

/** The walcast Realtime URL the way supabase-js builds it from the project URL. */
export function realtimeUrl() {
  const base = env('WALCAST_URL').replace(/^http/i, 'ws').replace(/\/+$/, '')
  return `${base}/realtime/v1`
}

/**
 * A RealtimeClient on walcast with `apikey` (node 20 has no global WebSocket: `ws` is the
 * transport). `vsn` undefined keeps the client's default serializer.
 */
export function client(apikey, { vsn, ...rest } = {}) {
  const opts = {
    params: { apikey },
    transport: WebSocket,
    logger: process.env.WALCAST_JS_DEBUG ? (kind, msg, data) => log(kind, msg, data ?? '') : undefined,
    ...rest,
  }
  if (vsn) opts.vsn = vsn
  return new RealtimeClient(realtimeUrl(), opts)
}

/**
 * Records everything a channel reports: subscribe statuses (with error messages) and `system`
 * messages. Returns the record; `rec.statuses` and `rec.system` grow as they arrive. Each is
 * also printed with `label`.
 */
export function watch(channel, label) {
  const rec = { statuses: [], errors: [], system: [] }
  channel.on('system', {}, (payload) => {
    rec.system.push(payload)
    out({ label, system: payload })
  })
  rec.subscribe = () =>
    channel.subscribe((status, err) => {
      rec.statuses.push(status)
      if (err) rec.errors.push(err.message)
      out({ label, status, ...(err ? { error: err.message } : {}) })
    })
  return rec
}

/** Waits until the record shows SUBSCRIBED and `n` system messages (default 1). */
export async function subscribed(rec, label, n = 1) {
  await until(`${label} SUBSCRIBED`, () => rec.statuses.includes('SUBSCRIBED'))
  await until(`${label} system message`, () => rec.system.length >= n)
}

/**
 * Leaves every channel (`phx_leave`, so each reports CLOSED), closes the socket(s) and exits
 * (bounded: the watchdog still applies).
 */
export async function finish(...clients) {
  currentWait = 'leave and disconnect'
  await Promise.all(clients.map((c) => c.removeAllChannels()))
  out({ done: true })
  process.exit(0)
}
