// select: a postgres_changes binding with `select` gets only those columns plus the primary key
// in `new`, and SUBSCRIBED as usual.
import { client, env, out, watch, subscribed, ready, until, finish } from './lib.mjs'

const rt = client(env('TOKEN'), { vsn: process.env.VSN })
const rows = []
const channel = rt
  .channel(`select-${process.env.VSN || 'default'}`)
  .on(
    'postgres_changes',
    { event: 'INSERT', schema: 'public', table: 'monitoring_events', select: ['source', 'event_type'] },
    (c) => rows.push(c.new)
  )
const rec = watch(channel, 'select')
rec.subscribe()
await subscribed(rec, 'select')
await ready('insert')
await until('a row', () => rows.length >= 1)
out({ label: 'select', rows })
await finish(rt)
