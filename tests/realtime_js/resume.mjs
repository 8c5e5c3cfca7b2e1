// resume: @supabase/supabase-js as an app uses it, with one more option:
// `createClient(url, key, { realtime: { params: { resume_id } } })`. The channel listens to
// INSERTs of public.resume_rows and prints each row's id as it arrives ({"id": n}); the test
// drops the connection, restarts walcast and floods the client meanwhile, and checks that every
// id arrived. `end` on stdin makes the script leave and exit. No transport is passed: Node's
// own WebSocket, as in an app.
import { createClient } from '@supabase/supabase-js'
import { env, out, watch, subscribed, ready, command, finish } from './lib.mjs'

const supabase = createClient(env('WALCAST_URL'), env('TOKEN'), {
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  realtime: {
    params: { resume_id: env('RESUME_ID') },
    heartbeatIntervalMs: Number(env('HEARTBEAT_MS')),
    reconnectAfterMs: () => 200,
  },
})
const channel = supabase
  .channel('resume')
  .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'resume_rows' }, (p) => {
    out({ id: Number(p.new.id) })
  })
const rec = watch(channel, 'resume')
rec.subscribe()
await subscribed(rec, 'resume')
await ready('subscribed')
while ((await command()) !== 'end') {}
await finish(supabase.realtime)
