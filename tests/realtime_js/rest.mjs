// rest: broadcast over HTTP the way realtime-js sends it. A receiver joins the topic; a sender's
// channel on the same topic is never joined, so send() falls back to the batch endpoint, and
// httpSend() posts to the per-event endpoint (JSON, then bytes). A payload over the limit is
// rejected with walcast's error text.
import { client, env, out, watch, until, finish } from './lib.mjs'

const topic = `rest-${env('TAG')}`
const token = env('TOKEN')
const vsn = env('VSN')
const receiver = client(token, { vsn })
const received = []
const channel = receiver
  .channel(topic, { config: { broadcast: { self: false } } })
  .on('broadcast', { event: 'fallback' }, (m) => received.push(m))
  .on('broadcast', { event: 'http' }, (m) => received.push(m))
  .on('broadcast', { event: 'bytes' }, (m) => {
    const bytes = m.payload instanceof ArrayBuffer ? [...new Uint8Array(m.payload)] : m.payload
    received.push({ ...m, payload: bytes })
  })
const rec = watch(channel, 'r')
rec.subscribe()
await until('receiver SUBSCRIBED', () => rec.statuses.includes('SUBSCRIBED'))

const sender = client(token, { vsn })
const unjoined = sender.channel(topic)
const has = (event) => received.some((m) => m.event === event)

const fallback = await unjoined.send({ type: 'broadcast', event: 'fallback', payload: { n: 1 } })
out({ label: 's', sent: 'fallback', result: fallback })
await until('fallback received', () => has('fallback'))

const http = await unjoined.httpSend('http', { n: 2 })
out({ label: 's', sent: 'http', result: http })
await until('http received', () => has('http'))

if (vsn === '2.0.0') {
  const bytes = await unjoined.httpSend('bytes', new Uint8Array([7, 8, 9]).buffer)
  out({ label: 's', sent: 'bytes', result: bytes })
  await until('bytes received', () => has('bytes'))
}

try {
  await unjoined.httpSend('big', { s: 'x'.repeat(300 * 1024) })
  out({ label: 's', big: 'accepted' })
} catch (e) {
  out({ label: 's', big_error: e.message })
}
out({ label: 'r', received })
await finish(receiver, sender)
