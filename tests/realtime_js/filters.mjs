// filters: one channel per filter operator (plus builder-made filters); the test inserts probe
// rows, then `end` rows every channel matches. A channel that has seen an `end` row has seen
// every probe row it will get (delivery follows commit order).
import { postgresChangesFilter } from '@supabase/realtime-js'
import { client, env, out, watch, subscribed, ready, until, finish } from './lib.mjs'

const filters = {
  eq: 'source=eq.s2',
  neq: 'source=neq.s2',
  lt: 'source=lt.s2',
  lte: 'source=lte.s2',
  gt: 'source=gt.s2',
  gte: 'source=gte.s2',
  in: 'source=in.(s1,s3)',
  in_quoted: postgresChangesFilter().in('source', ['s3', 'x,y']),
  and: postgresChangesFilter().eq('source', 's1').neq('event_type', 'zzz'),
  // The 2026 operators, as the builder writes them.
  like: postgresChangesFilter().like('source', 's%'),
  ilike: postgresChangesFilter().ilike('source', 'S_'),
  match: postgresChangesFilter().match('source', '^s[12]$'),
  imatch: postgresChangesFilter().imatch('source', '^(S3|X,Y)$'),
  isdistinct: postgresChangesFilter().isDistinct('source', 's2'),
  not_in: postgresChangesFilter().not('source', 'in', ['s1', 's2']),
  not_like: postgresChangesFilter().not('source', 'like', 's%'),
  not_is_null: postgresChangesFilter().not('source', 'is', null),
}

const rt = client(env('TOKEN'), { vsn: process.env.VSN })
const ends = {}
const recs = {}
for (const [label, filter] of Object.entries(filters)) {
  ends[label] = 0
  const channel = rt.channel(`filter-${label}`).on(
    'postgres_changes',
    { event: 'INSERT', schema: 'public', table: 'monitoring_events', filter },
    ({ new: row }) => {
      if (row.event_type === 'end') ends[label] += 1
      out({ label, row: { source: row.source, event_type: row.event_type } })
    }
  )
  out({ label, filter: String(filter) })
  recs[label] = watch(channel, label)
  recs[label].subscribe()
}
for (const [label, rec] of Object.entries(recs)) {
  await subscribed(rec, label)
}
await ready('filters')
await until('an end row on every channel', () => Object.values(ends).every((n) => n > 0))
await finish(rt)
