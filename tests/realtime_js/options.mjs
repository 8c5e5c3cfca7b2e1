// options: the join options of realtime-js 2.119. `postgres_changes_options.wait` with a valid
// binding reports SUBSCRIBED once the bindings are live (and `broadcast.replication_ready` gets
// its system message); with a binding that cannot be served it reports CHANNEL_ERROR with the
// server's reason instead of SUBSCRIBED.
import { client, env, out, watch, until, ready, finish } from './lib.mjs'

const rt = client(env('TOKEN'), { vsn: process.env.VSN })
const tag = process.env.VSN || 'default'
const changes = []
const good = rt
  .channel(`wait-good-${tag}`, {
    config: {
      broadcast: { replication_ready: true },
      postgres_changes_options: { wait: true, timeout: 3000 },
    },
  })
  .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'monitoring_events' }, (c) => {
    changes.push(c.new.source)
  })
const goodRec = watch(good, 'good')
goodRec.subscribe()
await until('good SUBSCRIBED', () => goodRec.statuses.includes('SUBSCRIBED'))
await until('good system messages', () => goodRec.system.length >= 2)

const bad = rt
  .channel(`wait-bad-${tag}`, { config: { postgres_changes_options: { wait: true, timeout: 3000 } } })
  .on('postgres_changes', { event: '*', schema: 'public', table: 'nope' }, () => out({ label: 'bad', unexpected: true }))
const badRec = watch(bad, 'bad')
badRec.subscribe()
await until('bad CHANNEL_ERROR', () => badRec.statuses.includes('CHANNEL_ERROR'))
await rt.removeChannel(bad)

await ready('insert')
await until('the row', () => changes.length >= 1)
out({ label: 'good', changes })
await finish(rt)
