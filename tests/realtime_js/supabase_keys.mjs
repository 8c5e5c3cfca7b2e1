// supabase_keys: @supabase/supabase-js itself, the way an app uses it with today's keys:
// `createClient(url, 'sb_publishable_…')`. One client carries a signed-in user's ES256 token
// (the `accessToken` option, which supabase-js hands to Realtime), one has no user (supabase-js
// then sends the publishable key itself as the channel's access_token). Both subscribe to every
// change of monitoring_events; the test writes rows, then deletes a sentinel row that every
// subscriber receives, which tells the script that the rows have been delivered. No transport
// is passed: supabase-js uses Node's own WebSocket, as it does in an app.
import { createClient } from '@supabase/supabase-js'
import { env, out, watch, subscribed, ready, until, finish } from './lib.mjs'

const url = env('WALCAST_URL')
const publishable = env('PUBLISHABLE_KEY')
const userToken = env('TOKEN_USER')
const sentinel = env('SENTINEL')
out({ node: process.version })

const noSession = { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false }
const clients = {
  user: createClient(url, publishable, { accessToken: async () => userToken }),
  anon: createClient(url, publishable, { auth: noSession }),
}

// supabase-js hands the `accessToken` result to Realtime asynchronously; a channel subscribed
// before that lands joins without it (as anon, here and on Supabase alike) and keeps that role.
// Awaiting setAuth() first, as Supabase's docs advise, makes the join carry the user's token.
await clients.user.realtime.setAuth()

const recs = {}
const done = {}
for (const [label, supabase] of Object.entries(clients)) {
  done[label] = false
  const channel = supabase
    .channel('keys')
    .on('postgres_changes', { event: '*', schema: 'public', table: 'monitoring_events' }, (p) => {
      if (p.eventType === 'DELETE' && p.old?.id === sentinel) done[label] = true
      out({ label, change: { eventType: p.eventType, source: p.new.source ?? null } })
    })
  recs[label] = watch(channel, label)
  recs[label].subscribe()
}
for (const [label, rec] of Object.entries(recs)) {
  await subscribed(rec, label)
}
await ready('rows')
await until('the sentinel on every client', () => Object.values(done).every(Boolean))
await finish(...Object.values(clients))
