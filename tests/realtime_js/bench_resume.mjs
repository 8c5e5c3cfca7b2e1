// bench_resume: the client of `walcast-bench resume` (not a test). supabase-js with a
// resume_id, one channel on INSERTs of monitoring_events; counts the distinct `data.seq` values
// in [SEQ_FROM, SEQ_TO] and prints {"complete": ...} with the times when it has them all.
// Prints {"subscribed": ms} once the channel is subscribed. Exits on `end` (stdin) or when
// complete if EXIT_WHEN_COMPLETE is set.
import { createInterface } from 'node:readline'
import { createClient } from '@supabase/supabase-js'

const env = (k) => {
  const v = process.env[k]
  if (v === undefined || v === '') throw new Error(`missing ${k}`)
  return v
}
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const started = Date.now()
const from = Number(env('SEQ_FROM'))
const to = Number(env('SEQ_TO'))
const want = to - from + 1
const seen = new Set()
let deliveries = 0
let first = null
let done = false
const supabase = createClient(env('WALCAST_URL'), env('TOKEN'), {
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  realtime: {
    params: { resume_id: env('RESUME_ID') },
    heartbeatIntervalMs: Number(process.env.HEARTBEAT_MS || 25000),
  },
})
supabase
  .channel('bench')
  .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'monitoring_events' }, (p) => {
    const seq = Number(p.new.data?.seq)
    if (!(seq >= from && seq <= to)) return
    deliveries++
    if (first === null) first = Date.now()
    seen.add(seq)
    if (!done && seen.size === want) {
      done = true
      const now = Date.now()
      out({ complete: seen.size, deliveries, since_start_ms: now - started, since_first_ms: now - first, at_ms: now })
      if (process.env.EXIT_WHEN_COMPLETE) process.exit(0)
    }
  })
  .subscribe((status, err) => {
    out({ status, ...(err ? { error: err.message } : {}), since_start_ms: Date.now() - started })
    if (status === 'SUBSCRIBED') out({ subscribed: Date.now() - started })
  })
createInterface({ input: process.stdin }).on('line', (l) => {
  if (l.trim() === 'end') process.exit(0)
})
