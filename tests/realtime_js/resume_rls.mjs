// resume_rls: supabase-js signed in as a user (the `accessToken` option) with a resume_id,
// listening to every change of monitoring_events, printing each row's `source` ({"source": s}).
// The test kills the process (a page reload), writes rows of several users, and starts it again
// with the same resume_id: the replay must hold this user's rows only. `end` on stdin exits.
import { createClient } from '@supabase/supabase-js'
import { env, out, watch, subscribed, ready, command, finish } from './lib.mjs'

const userToken = env('TOKEN_USER')
const supabase = createClient(env('WALCAST_URL'), env('ANON_KEY'), {
  accessToken: async () => userToken,
  realtime: { params: { resume_id: env('RESUME_ID') } },
})
// The join must carry the user's token (see supabase_keys.mjs).
await supabase.realtime.setAuth()
const channel = supabase
  .channel('own-rows')
  .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'monitoring_events' }, (p) => {
    out({ source: p.new.source })
  })
const rec = watch(channel, 'own')
rec.subscribe()
await subscribed(rec, 'own')
await ready('subscribed')
while ((await command()) !== 'end') {}
await finish(supabase.realtime)
