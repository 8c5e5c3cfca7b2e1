// dbcast: Broadcast from Database. supabase-js clients join topic `user-1`: user-1 on the
// private channel, anon on the public one, user-2 is refused the private one; a realtime-js
// client with serializer 1.0.0 joins the private channel too. The test then fires a trigger
// that calls realtime.broadcast_changes and runs realtime.send / realtime.send_binary from
// psql, ending with an `end` message on each side, and every receiver reports what it got.
import { createClient } from '@supabase/supabase-js'
import { client, env, out, watch, ready, until, finish } from './lib.mjs'

const url = env('WALCAST_URL')
const anonKey = env('ANON_KEY')
const noSession = { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false }
const user = createClient(url, anonKey, { accessToken: async () => env('TOKEN_USER') })
const other = createClient(url, anonKey, { accessToken: async () => env('TOKEN_OTHER') })
const anon = createClient(url, anonKey, { auth: noSession })
await user.realtime.setAuth()
await other.realtime.setAuth()
const v1 = client(env('TOKEN_USER'), { vsn: '1.0.0' })

const got = { private: [], public: [], v1: [], intruder: [] }
function listen(channel, label) {
  channel.on('broadcast', { event: '*' }, (m) => {
    const payload = m.payload instanceof ArrayBuffer ? { bytes: Array.from(new Uint8Array(m.payload)) } : m.payload
    const rec = { event: m.event, payload, meta: m.meta ?? null }
    got[label].push(rec)
    out({ label, received: rec })
  })
  return watch(channel, label)
}

const recs = {
  private: listen(user.channel('user-1', { config: { private: true } }), 'private'),
  public: listen(anon.channel('user-1'), 'public'),
  v1: listen(v1.channel('user-1', { config: { private: true } }), 'v1'),
  intruder: listen(other.channel('user-1', { config: { private: true } }), 'intruder'),
}
Object.values(recs).forEach((r) => r.subscribe())
for (const label of ['private', 'public', 'v1']) {
  await until(`${label} SUBSCRIBED`, () => recs[label].statuses.includes('SUBSCRIBED'))
}
await until('intruder refused', () => recs.intruder.statuses.includes('CHANNEL_ERROR'))
await ready('subscribed')
const ended = (label) => got[label].some((m) => m.event === 'end')
await until('every end message', () => ended('private') && ended('public') && ended('v1'))
await finish(user.realtime, other.realtime, anon.realtime, v1)
