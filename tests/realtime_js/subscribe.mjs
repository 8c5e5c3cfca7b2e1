// subscribe: a postgres_changes channel and a broadcast-only channel reach SUBSCRIBED, the
// server confirms the database subscription, heartbeats are answered, and unsubscribe closes
// both cleanly. Joins the server refuses report CHANNEL_ERROR with the server's reason: a
// private channel without service_role, and a join whose access token (setAuth) has expired.
import { client, env, out, watch, subscribed, until, finish } from './lib.mjs'

const heartbeats = []
const rt = client(env('TOKEN'), {
  vsn: process.env.VSN,
  heartbeatIntervalMs: 200,
  heartbeatCallback: (status) => heartbeats.push(status),
})
out({ endpoint_vsn: new URL(rt.endpointURL()).searchParams.get('vsn') })

const changes = rt
  .channel('room1')
  .on('postgres_changes', { event: '*', schema: 'public', table: 'monitoring_events' }, () => {})
const a = watch(changes, 'changes')
const plain = rt.channel('plain')
const b = watch(plain, 'plain')
a.subscribe()
b.subscribe()

await subscribed(a, 'changes')
await until('plain SUBSCRIBED', () => b.statuses.includes('SUBSCRIBED'))
out({
  label: 'changes',
  state: changes.state,
  binding_ids: changes.bindings.postgres_changes.map((x) => x.id),
  topic: changes.topic,
})
out({ label: 'plain', state: plain.state, system_count: b.system.length })
await until('a heartbeat answered', () => heartbeats.includes('ok'))
out({ heartbeats: [...new Set(heartbeats)].sort() })

// Refused joins.
const secret = rt.channel('secret', { config: { private: true } })
const s = watch(secret, 'private')
s.subscribe()
await until('private channel refused', () => s.statuses.includes('CHANNEL_ERROR'))
out({ label: 'private', removed: await rt.removeChannel(secret) })

const stale = client(env('TOKEN'), { vsn: process.env.VSN })
await stale.setAuth(env('TOKEN_EXPIRED'))
const old = stale.channel('stale')
const o = watch(old, 'expired')
o.subscribe()
await until('expired token refused', () => o.statuses.includes('CHANNEL_ERROR'))
out({ label: 'expired', removed: await stale.removeChannel(old) })

out({ label: 'changes', unsubscribe: await changes.unsubscribe() })
out({ label: 'plain', unsubscribe: await plain.unsubscribe() })
await until('CLOSED statuses', () => a.statuses.includes('CLOSED') && b.statuses.includes('CLOSED'))
out({ label: 'changes', state_after: changes.state, channels_after: rt.getChannels().length })
await finish(rt, stale)
