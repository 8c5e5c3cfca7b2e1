// reconnect: the test kills walcast (kill -9) after the channel is subscribed and starts it
// again on the same port; realtime-js reports the channel error, reconnects, rejoins (a new
// "Subscribed to PostgreSQL") and receives a change made after the restart.
import { client, env, out, watch, subscribed, ready, until, finish } from './lib.mjs'

const vsn = process.env.VSN
const rt = client(env('TOKEN'), { vsn, reconnectAfterMs: () => 200 })
const changes = []
const channel = rt
  .channel(`reconnect-${vsn || 'default'}`)
  .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'monitoring_events' }, (p) => {
    changes.push(p)
    out({ label: 'changes', change: { eventType: p.eventType, source: p.new.source } })
  })
const rec = watch(channel, 'changes')
rec.subscribe()
await subscribed(rec, 'changes')
await ready('subscribed')
await until('channel error after the kill', () => rec.statuses.includes('CHANNEL_ERROR'))
await until('subscribed again', () => rec.statuses.lastIndexOf('SUBSCRIBED') > rec.statuses.indexOf('CHANNEL_ERROR'))
await until('second system message', () => rec.system.length >= 2)
out({ label: 'changes', state: channel.state, connection: rt.connectionState() })
await ready('resubscribed')
await until('a change after the restart', () => changes.length >= 1)
await finish(rt)
