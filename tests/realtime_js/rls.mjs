// rls: four clients with different tokens subscribe to every change. In each of two phases
// the test writes rows and finally deletes a sentinel row, which every subscriber receives
// (DELETE is not RLS-checked) and which tells the script that the phase's changes have been
// delivered. (Phases, because visibility is checked against a row's current version: an
// UPDATE racing the check of an earlier INSERT could change what that INSERT shows.)
import { client, env, out, watch, subscribed, ready, until, finish } from './lib.mjs'

const users = {
  alice: { token: env('TOKEN_ALICE'), vsn: '1.0.0' },
  bob: { token: env('TOKEN_BOB'), vsn: '2.0.0' },
  anon: { token: env('TOKEN_ANON') },
  service: { token: env('TOKEN_SERVICE'), vsn: '1.0.0' },
}
const sentinels = env('SENTINELS').split(',')

const clients = []
const recs = {}
const done = {}
let phase = 0
for (const [label, u] of Object.entries(users)) {
  const rt = client(u.token, { vsn: u.vsn })
  clients.push(rt)
  done[label] = sentinels.map(() => false)
  const channel = rt
    .channel('rls')
    .on('postgres_changes', { event: '*', schema: 'public', table: 'monitoring_events' }, (p) => {
      const i = sentinels.indexOf(p.old?.id)
      if (p.eventType === 'DELETE' && i >= 0) done[label][i] = true
      out({ label, phase, change: { eventType: p.eventType, source: p.new.source ?? null, old: p.old } })
    })
  recs[label] = watch(channel, label)
  recs[label].subscribe()
}
for (const [label, rec] of Object.entries(recs)) {
  await subscribed(rec, label)
}
for (phase = 0; phase < sentinels.length; phase++) {
  await ready(`phase${phase}`)
  await until(`sentinel ${phase} on every client`, () => Object.values(done).every((d) => d[phase]))
}
await finish(...clients)
