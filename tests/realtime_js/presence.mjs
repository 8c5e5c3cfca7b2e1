// presence: A (key alice) and B (key bob) track themselves; both see both in presenceState().
// B untracks (A sees bob leave), tracks again (A sees bob join), then leaves the channel
// (A sees bob leave and only alice remains).
import { client, env, out, watch, until, finish } from './lib.mjs'

const topic = `lobby-${env('TAG')}`
const token = env('TOKEN')
const peers = { alice: { vsn: env('VSN_A') }, bob: { vsn: env('VSN_B') } }
const clients = []
for (const [key, p] of Object.entries(peers)) {
  p.client = client(token, { vsn: p.vsn })
  clients.push(p.client)
  p.joins = []
  p.leaves = []
  p.channel = p.client
    .channel(topic, { config: { presence: { key } } })
    .on('presence', { event: 'sync' }, () => {})
    .on('presence', { event: 'join' }, ({ key: k, newPresences }) => {
      p.joins.push(k)
      out({ label: key, join: k, presences: newPresences })
    })
    .on('presence', { event: 'leave' }, ({ key: k, leftPresences }) => {
      p.leaves.push(k)
      out({ label: key, leave: k, presences: leftPresences })
    })
  p.rec = watch(p.channel, key)
  p.rec.subscribe()
}
const { alice, bob } = peers
await until('both subscribed', () =>
  alice.rec.statuses.includes('SUBSCRIBED') && bob.rec.statuses.includes('SUBSCRIBED'))

for (const [key, p] of Object.entries(peers)) {
  out({ label: key, track: await p.channel.track({ user: key, status: 'online' }) })
}
const keys = (p) => Object.keys(p.channel.presenceState()).sort().join(',')
await until('both present everywhere', () => keys(alice) === 'alice,bob' && keys(bob) === 'alice,bob')
for (const [key, p] of Object.entries(peers)) {
  out({ label: key, state: p.channel.presenceState() })
}

const bobLeft = () => alice.leaves.filter((k) => k === 'bob').length
const bobJoined = () => alice.joins.filter((k) => k === 'bob').length
out({ label: 'bob', untrack: await bob.channel.untrack() })
await until('bob gone at alice', () => bobLeft() === 1 && keys(alice) === 'alice')
out({ label: 'bob', track: await bob.channel.track({ user: 'bob', status: 'back' }) })
await until('bob back at alice', () => bobJoined() === 2 && keys(alice) === 'alice,bob')
out({ label: 'alice', state_after_retrack: alice.channel.presenceState() })
out({ label: 'bob', unsubscribe: await bob.channel.unsubscribe() })
await until('bob left at alice', () => bobLeft() === 2 && keys(alice) === 'alice')
out({ label: 'alice', state_after_leave: alice.channel.presenceState() })
await finish(...clients)
