// invalid_filter: bindings walcast cannot subscribe. realtime-js reports SUBSCRIBED (the join
// succeeds) and the reason arrives as a `system` message with status `error`; the channel stays
// joined and usable (a self-broadcast still comes back).
import { postgresChangesFilter } from '@supabase/realtime-js'
import { client, env, out, watch, subscribed, until, finish } from './lib.mjs'

const cases = {
  bad_op: { filter: 'source=foo.1' },
  bad_column: { filter: 'nope=eq.1' },
  in_without_parens: { filter: 'source=in.s1' },
  bad_pattern: { filter: postgresChangesFilter().match('source', '(unclosed') },
  unknown_table: { table: 'nope' },
}

const rt = client(env('TOKEN'), { vsn: process.env.VSN })
// Concurrent runs (one per serializer) use their own topics so their broadcasts don't mix.
const tag = process.env.VSN || 'default'
const recs = {}
const channels = {}
const echoes = {}
for (const [label, c] of Object.entries(cases)) {
  echoes[label] = []
  const binding = { event: '*', schema: 'public', table: c.table ?? 'monitoring_events' }
  if (c.filter) binding.filter = c.filter
  channels[label] = rt
    .channel(`invalid-${label}-${tag}`, { config: { broadcast: { self: true, ack: true } } })
    .on('postgres_changes', binding, () => out({ label, unexpected_change: true }))
    .on('broadcast', { event: 'echo' }, (m) => echoes[label].push(m))
  recs[label] = watch(channels[label], label)
  recs[label].subscribe()
}
for (const [label, rec] of Object.entries(recs)) {
  await subscribed(rec, label)
  out({ label, state: channels[label].state })
  const ack = await channels[label].send({ type: 'broadcast', event: 'echo', payload: { label } })
  await until(`${label} echo`, () => echoes[label].length === 1)
  out({ label, ack, echo: echoes[label][0] })
}
await finish(rt)
