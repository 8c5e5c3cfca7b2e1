// broadcast: client A (self: true, ack: true) and client B (self: false, ack: false) on one
// topic, each with its own serializer. A's sends resolve on the server's ack; B's resolve at
// once. The exchange is causal (each send waits for the previous message to arrive), so a
// message B would have received from itself would have come before A's reply.
import { client, env, out, watch, until, finish } from './lib.mjs'

const topic = `chat-${env('TAG')}`
const token = env('TOKEN')
const peers = {
  a: { vsn: env('VSN_A'), config: { broadcast: { self: true, ack: true } } },
  b: { vsn: env('VSN_B'), config: { broadcast: { self: false, ack: false } } },
}
const clients = []
for (const [label, p] of Object.entries(peers)) {
  p.client = client(token, { vsn: p.vsn })
  clients.push(p.client)
  p.received = []
  p.channel = p.client
    .channel(topic, { config: p.config })
    .on('broadcast', { event: 'msg' }, (m) => {
      p.received.push(m)
      out({ label, received: m })
    })
    .on('broadcast', { event: 'other' }, (m) => out({ label, other: m }))
    .on('broadcast', { event: 'bin' }, (m) => {
      const bytes = m.payload instanceof ArrayBuffer ? [...new Uint8Array(m.payload)] : m.payload
      out({ label, binary: { ...m, payload: bytes } })
    })
  p.rec = watch(p.channel, label)
  p.rec.subscribe()
}
const { a, b } = peers
await until('both subscribed', () => a.rec.statuses.includes('SUBSCRIBED') && b.rec.statuses.includes('SUBSCRIBED'))

const send = async (label, payload, event = 'msg') => {
  const result = await peers[label].channel.send({ type: 'broadcast', event, payload })
  out({ label, sent: payload, event, result })
}
const got = (p, n) => p.received.some((m) => m.payload.n === n)

await send('a', { n: 1, from: 'a', nested: { list: [1, 'two', null] } })
await until('1 at a and b', () => got(a, 1) && got(b, 1))
await send('b', { n: 2, from: 'b' })
await until('2 at a', () => got(a, 2))
await send('b', { n: 0 }, 'other')
await send('a', { n: 3, from: 'a' })
await until('3 at a and b', () => got(a, 3) && got(b, 3))
// Raw bytes (encoding 0 of the binary frames; vsn 2.0.0 only, 1.0.0 peers never get them).
if (a.vsn === '2.0.0') {
  const r = await a.channel.send({ type: 'broadcast', event: 'bin', payload: new Uint8Array([0, 1, 2, 254, 255]).buffer })
  out({ label: 'a', sent_binary: true, result: r })
}
await send('a', { n: 4, from: 'a' })
await until('4 at a and b', () => got(a, 4) && got(b, 4))
await finish(...clients)
