// token: two clients connect with the anon key and act as a user through setAuth (the
// access_token in the join payload).
//  - refresh: joined as alice with a short-lived token, the test checks alice's view; setAuth
//    with bob's token re-subscribes; once alice's token has expired the channel still works
//    and shows bob's view.
//  - callback: the supabase-js way, an `accessToken` callback the client calls on connect and
//    on every heartbeat; when it starts returning bob's token, the next heartbeat pushes it.
//  - expiry: joined with a token that expires in a few seconds and never refreshed: the server
//    reports the expiry and closes the channel.
import { client, env, out, watch, subscribed, ready, until, finish } from './lib.mjs'

/** A JWT's `exp` in milliseconds. */
function expiresAt(jwt) {
  const claims = JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'))
  return claims.exp * 1000
}

const anonKey = env('TOKEN_ANON')
const aliceShort = env('TOKEN_ALICE_SHORT')
const sentinels = [env('SENTINEL_1'), env('SENTINEL_2')]
const vsn = process.env.VSN
const tag = vsn || 'default'

const a = client(anonKey, { vsn })
await a.setAuth(aliceShort)
let phase = 0
const sentinelSeen = [false, false]
const callbackSeen = [false, false]
const refresh = a
  .channel(`token-refresh-${tag}`)
  .on('postgres_changes', { event: '*', schema: 'public', table: 'monitoring_events' }, (p) => {
    const i = sentinels.indexOf(p.old?.id)
    if (p.eventType === 'DELETE' && i >= 0) sentinelSeen[i] = true
    out({ label: 'refresh', phase, change: { eventType: p.eventType, source: p.new.source ?? null } })
  })
const recA = watch(refresh, 'refresh')
recA.subscribe()

let current = env('TOKEN_ALICE')
const c = client(anonKey, { vsn, accessToken: async () => current, heartbeatIntervalMs: 300 })
// Fetch the first token before joining: subscribe() on an unconnected client computes the join
// payload synchronously while the callback is still pending, so the join would carry no
// access_token and the channel would run with the connect token (anon). That is realtime-js's
// behaviour, not the server's.
await c.setAuth()
const viaCallback = c
  .channel(`token-callback-${tag}`)
  .on('postgres_changes', { event: '*', schema: 'public', table: 'monitoring_events' }, (p) => {
    const i = sentinels.indexOf(p.old?.id)
    if (p.eventType === 'DELETE' && i >= 0) callbackSeen[i] = true
    out({ label: 'callback', phase, change: { eventType: p.eventType, source: p.new.source ?? null } })
  })
const recC = watch(viaCallback, 'callback')
recC.subscribe()

const b = client(anonKey, { vsn })
await b.setAuth(env('TOKEN_EXPIRING'))
const expiring = b
  .channel(`token-expiry-${tag}`)
  .on('postgres_changes', { event: '*', schema: 'public', table: 'monitoring_events' }, () => {})
const recB = watch(expiring, 'expiry')
recB.subscribe()

await subscribed(recA, 'refresh')
await subscribed(recB, 'expiry')
await subscribed(recC, 'callback')
await ready('before_refresh')
await until('first sentinel', () => sentinelSeen[0] && callbackSeen[0])

phase = 1
await a.setAuth(env('TOKEN_BOB'))
await until('re-subscription after setAuth', () => recA.system.length >= 2)
current = env('TOKEN_BOB')
await until('re-subscription after a heartbeat', () => recC.system.length >= 2)

await until('expiry channel closed', () => recB.statuses.includes('CLOSED'))
out({ label: 'expiry', state: expiring.state, channels: b.getChannels().length })

// Past alice's expiry (the server's check would have fired by now had it kept her token).
const wakeAt = expiresAt(aliceShort) + 1000
await until("alice's token expiry", () => Date.now() > wakeAt)
out({ label: 'refresh', state: refresh.state })
await ready('after_expiry')
await until('second sentinel', () => sentinelSeen[1] && callbackSeen[1])
await finish(a, b, c)
