// changes: one channel with five bindings ('*', INSERT, UPDATE, DELETE, update); the test inserts,
// updates and deletes one row; every callback prints the payload as realtime-js presents it.
import { client, env, out, watch, subscribed, ready, until, finish } from './lib.mjs'

const rt = client(env('TOKEN'), { vsn: process.env.VSN })
// `update` in lower case: the server must echo it as sent for realtime-js to accept the reply.
const seen = { '*': [], INSERT: [], UPDATE: [], DELETE: [], update: [] }
let channel = rt.channel('changes')
for (const event of Object.keys(seen)) {
  channel = channel.on(
    'postgres_changes',
    { event, schema: 'public', table: 'monitoring_events' },
    (payload) => {
      seen[event].push(payload)
      out({ label: event, change: payload })
    }
  )
}
const rec = watch(channel, 'changes')
rec.subscribe()
await subscribed(rec, 'changes')
out({ label: 'changes', binding_ids: channel.bindings.postgres_changes.map((b) => b.id) })

await ready('changes')
await until('three changes on *', () => seen['*'].length >= 3)
await finish(rt)
