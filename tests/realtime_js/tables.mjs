// tables: tables other than monitoring_events, each with its own policies. Four clients (two
// users, anon, service_role) subscribe to `public.orders` (own rows by `owner`; anon sees the
// `public` ones) and the users and service_role to schema `app` (schema only: `app.notes`,
// rows by `tenant`, `secret` hidden from users by a column privilege). A phase ends with a
// DELETE of a sentinel row in each table, which every subscriber of that table receives.
import { client, env, out, watch, subscribed, ready, until, finish } from './lib.mjs'

const users = {
  alice: { token: env('TOKEN_ALICE'), vsn: '1.0.0', notes: true },
  bob: { token: env('TOKEN_BOB'), vsn: '2.0.0', notes: true },
  anon: { token: env('TOKEN_ANON'), notes: false },
  service: { token: env('TOKEN_SERVICE'), notes: true },
}
const ORDER_SENTINEL = Number(env('ORDER_SENTINEL'))
const NOTE_SENTINEL = env('NOTE_SENTINEL')

const clients = []
const recs = {}
const done = {}
for (const [label, u] of Object.entries(users)) {
  const rt = client(u.token, { vsn: u.vsn })
  clients.push(rt)
  done[label] = { orders: false, notes: !u.notes }
  const seen = (table) => (p) => {
    if (p.eventType === 'DELETE' && table === 'orders' && p.old?.id === ORDER_SENTINEL) {
      done[label].orders = true
    }
    if (p.eventType === 'DELETE' && table === 'notes' && p.old?.slug === NOTE_SENTINEL) {
      done[label].notes = true
    }
    out({ label, change: { table: p.table, schema: p.schema, eventType: p.eventType, new: p.new, old: p.old, errors: p.errors } })
  }
  let channel = rt
    .channel(`tables-${label}`)
    .on('postgres_changes', { event: '*', schema: 'public', table: 'orders' }, seen('orders'))
  if (u.notes) {
    channel = channel.on('postgres_changes', { event: '*', schema: 'app' }, seen('notes'))
  }
  recs[label] = watch(channel, label)
  recs[label].subscribe()
}
for (const [label, rec] of Object.entries(recs)) {
  await subscribed(rec, label)
}
await ready('phase0')
await until('sentinels on every client', () =>
  Object.values(done).every((d) => d.orders && d.notes),
)
await finish(...clients)
