// replay: broadcast replay and persistence with supabase-js (serializer 2.0.0). The test has
// stored 30 private broadcasts `m` {i: 1..30} on topic `user-1` a minute ago (plus one public
// and one on `lobby`, never replayed here). user-1 joins the private channel `user-1` with
// `broadcast.replay`: `a` {since: 0, limit: 5}, `b` {since: 0, limit: 100} (25 at most), `c`
// {since: an hour from now} (none); `bad` {since: "yesterday"} is refused. Then a sender
// broadcasts `p` {k: 0..4}: k 1 with `persist` over the socket, k 2 and 3 with httpSend()
// `persist` (true, {ttl}), k 0 and 4 without. After the test's closing `end` (sent with
// realtime.send), `d` joins with {since: just before the sends} and gets k 1..3 only.
import { createClient } from '@supabase/supabase-js'
import { env, out, watch, ready, until, finish } from './lib.mjs'

const url = env('WALCAST_URL')
const anonKey = env('ANON_KEY')
const make = async () => {
  const c = createClient(url, anonKey, { accessToken: async () => env('TOKEN_USER') })
  await c.realtime.setAuth()
  return c
}
// One client per channel: a client keeps one channel per topic.
const clients = []
const sender = await make()

const got = {}
async function join(label, replay) {
  got[label] = []
  const c = await make()
  clients.push(c.realtime)
  const ch = c.channel('user-1', { config: { private: true, broadcast: { replay } } })
  ch.on('broadcast', { event: '*' }, (m) => {
    const rec = { event: m.event, payload: m.payload, meta: m.meta ?? null }
    got[label].push(rec)
    out({ label, received: rec })
  })
  const rec = watch(ch, label)
  rec.subscribe()
  return rec
}

const recs = {
  a: await join('a', { since: 0, limit: 5 }),
  b: await join('b', { since: 0, limit: 100 }),
  c: await join('c', { since: Date.now() + 3600 * 1000 }),
  bad: await join('bad', { since: 'yesterday' }),
}
for (const label of ['a', 'b', 'c']) {
  await until(`${label} SUBSCRIBED`, () => recs[label].statuses.includes('SUBSCRIBED'))
}
await until('bad refused', () => recs.bad.statuses.includes('CHANNEL_ERROR'))
await until('the replays', () => got.a.length >= 5 && got.b.length >= 25)

const channel = sender.channel('user-1', { config: { private: true, broadcast: { ack: true } } })
const s = watch(channel, 'sender')
s.subscribe()
await until('sender SUBSCRIBED', () => s.statuses.includes('SUBSCRIBED'))
const since = Date.now() - 50
const results = []
results.push(await channel.send({ type: 'broadcast', event: 'p', payload: { k: 0 } }))
results.push(await channel.send({ type: 'broadcast', event: 'p', payload: { k: 1 }, persist: true }))
results.push(await channel.httpSend('p', { k: 2 }, { persist: true }))
results.push(await channel.httpSend('p', { k: 3 }, { persist: { ttl: 60 } }))
results.push(await channel.httpSend('p', { k: 4 }))
out({ label: 'sender', results })
await ready('sent')
const ended = (label) => got[label].some((m) => m.event === 'end')
await until('end everywhere', () => ended('a') && ended('b') && ended('c'))

const d = await join('d', { since, limit: 25 })
await until('d SUBSCRIBED', () => d.statuses.includes('SUBSCRIBED'))
await until('d replay', () => got.d.length >= 3)
out({ label: 'd', replayed_count: got.d.length })
await finish(sender.realtime, ...clients)
