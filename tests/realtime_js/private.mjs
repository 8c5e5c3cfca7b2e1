// private: channels with `config: { private: true }` authorized by realtime.messages policies.
// Two clients with user-1's token: the sender (ack: true) joins its own topic `user-1` and is
// refused `user-2` (CHANNEL_ERROR with the server's reason); the receiver joins `user-1` too and
// gets the sender's broadcast. Payloads carry TAG so parallel runs on the same topic can be told
// apart.
import { client, env, out, watch, until, finish } from './lib.mjs'

const token = env('TOKEN')
const tag = env('TAG')
const vsn = process.env.VSN

const sender = client(token, { vsn })
const receiver = client(token, { vsn })

const own = sender.channel('user-1', { config: { private: true, broadcast: { self: false, ack: true } } })
const a = watch(own, 'sender')
const received = []
const mine = receiver.channel('user-1', { config: { private: true } }).on('broadcast', { event: 'note' }, (m) => {
  if (m.payload?.tag !== tag) return
  received.push(m)
  out({ label: 'receiver', received: m })
})
const b = watch(mine, 'receiver')
a.subscribe()
b.subscribe()
await until('both user-1 channels SUBSCRIBED', () => a.statuses.includes('SUBSCRIBED') && b.statuses.includes('SUBSCRIBED'))

// Another user's private topic: refused.
const other = sender.channel('user-2', { config: { private: true } })
const o = watch(other, 'other')
o.subscribe()
await until('user-2 refused', () => o.statuses.includes('CHANNEL_ERROR'))
out({ label: 'other', removed: await sender.removeChannel(other) })

const payload = { n: 1, tag }
const result = await own.send({ type: 'broadcast', event: 'note', payload })
out({ label: 'sender', sent: payload, result })
await until('the broadcast at the receiver', () => received.length >= 1)

// Over HTTP: httpSend() to the own private topic is accepted and arrives; to another user's
// private topic the write policy refuses it with the server's text.
const http = await own.httpSend('note', { n: 2, tag })
out({ label: 'sender', http })
await until('the HTTP broadcast at the receiver', () => received.length >= 2)
const theirs = sender.channel('user-2', { config: { private: true } })
try {
  await theirs.httpSend('note', { n: 3, tag })
  out({ label: 'sender', http_other: 'accepted' })
} catch (e) {
  out({ label: 'sender', http_other_error: e.message })
}
await finish(sender, receiver)
