//! Memory bounded in bytes: a client that stops reading while rows of 1 MB stream is cut with
//! `lagged` and 4008 (on the Realtime endpoint: the lag `system` message and 4008) once its
//! backlog passes `--client-queue-bytes`, a reading client gets every row, the stalled `/ws`
//! client can resume without loss, and walcast's memory comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, Walcast, wait_until};

/// Rows written.
const ROWS: usize = 100;
/// Bytes of text in each row's `data` (the table allows 1 MiB).
const ROW_BYTES: usize = 1_000_000;
/// The client byte budget under test (the default).
const BUDGET_MIB: u64 = 16;
/// Rows the writer may run ahead of the reading client: it must never be the one cut (it is
/// at most this many rows, about 2 MB each as charged, behind: well under the budget).
const AHEAD: usize = 3;

/// A raw client socket.
type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects to `/ws` with a 4 KiB receive buffer (so a client that stops reading fills up
/// soon), reads the welcome and subscribes to everything.
async fn stalled_client(addr: &str) -> Socket {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("upgrade");
    let welcome = next_json(&mut ws).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws.send(Message::text(
        json!({"type": "subscribe", "id": "all"}).to_string(),
    ))
    .await
    .expect("subscribe");
    let reply = next_json(&mut ws).await.expect("subscribed");
    assert_eq!(reply["type"], "subscribed", "{reply}");
    ws
}

/// The next text frame as JSON (`None` on close, error or 60 s of silence).
async fn next_json(ws: &mut Socket) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                return None;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// What a client read: the `i` of each row event (without parsing 1 MB of JSON), the
/// `lagged` frame, the close code.
#[derive(Debug, Default)]
struct Read {
    /// `data.i` of each event, in order.
    rows: Vec<u64>,
    /// Each event's cursor.
    cursors: Vec<String>,
    /// The `lagged` frame, if any.
    lagged: Option<Value>,
    /// The `resumed` frame, if any.
    resumed: Option<Value>,
    /// Close code.
    close: Option<u16>,
}

/// The row number and cursor of an event frame, found by text search.
fn event_parts(text: &str) -> Option<(u64, String)> {
    if !text.starts_with(r#"{"type":"event""#) {
        return None;
    }
    let cursor_at = text.find(r#""cursor":""#)? + 10;
    let cursor = text.get(cursor_at..cursor_at + 24)?.to_owned();
    let i_at = text.find(r#""i":"#)? + 4;
    let digits: String = text[i_at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some((digits.parse().ok()?, cursor))
}

/// Reads until the close (or `until` rows, or `resumed`), counting rows in `progress`.
async fn read_all(ws: &mut Socket, until: usize, progress: &AtomicUsize) -> Read {
    let mut read = Read::default();
    while read.rows.len() < until {
        let msg = match tokio::time::timeout(Duration::from_secs(120), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            _ => break,
        };
        match msg {
            Message::Text(t) => {
                if let Some((i, cursor)) = event_parts(&t) {
                    read.rows.push(i);
                    read.cursors.push(cursor);
                    progress.fetch_add(1, Ordering::Relaxed);
                } else if let Ok(v) = serde_json::from_str::<Value>(&t) {
                    match v["type"].as_str() {
                        Some("lagged") => read.lagged = Some(v),
                        Some("resumed") => {
                            read.resumed = Some(v);
                            break;
                        }
                        Some("heartbeat") => {}
                        _ => panic!("unexpected frame {v}"),
                    }
                }
            }
            Message::Close(f) => {
                read.close = f.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_cut_at_its_byte_budget_while_a_reader_gets_every_row() {
    let db = support::fresh_db().await;
    let budget = format!("{BUDGET_MIB}MiB");
    let w = Walcast::start(&db, &["--client-queue-bytes", &budget]).await;
    let baseline_kib = w.rss_kib();
    let mut stalled = stalled_client(&w.addr).await;
    let mut reader = stalled_client(&w.addr).await;
    let got = Arc::new(AtomicUsize::new(0));
    let reader_task = {
        let got = Arc::clone(&got);
        tokio::spawn(async move {
            let read = read_all(&mut reader, ROWS, &got).await;
            (read, reader)
        })
    };
    // Rows of 1 MB, never more than AHEAD in front of the reading client.
    let sql = db.client().await;
    for i in 0..ROWS {
        let caught_up = wait_until(Duration::from_secs(120), || {
            let got = Arc::clone(&got);
            async move { got.load(Ordering::Relaxed) + AHEAD >= i }
        })
        .await;
        assert!(
            caught_up,
            "the reading client stopped at {} rows; log:\n{}",
            got.load(Ordering::Relaxed),
            w.log_text()
        );
        sql.execute(
            "insert into public.monitoring_events (event_type, source, data) \
             values ('big', 'memory-test', jsonb_build_object('i', $1::int, 'pad', repeat('x', $2::int)))",
            &[&(i as i32), &(ROW_BYTES as i32)],
        )
        .await
        .expect("insert");
    }
    let (read, _reader) = reader_task.await.expect("reader");
    assert_eq!(
        read.rows,
        (0..ROWS as u64).collect::<Vec<_>>(),
        "the reading client must get every row, in order"
    );
    assert!(read.lagged.is_none() && read.close.is_none(), "{read:?}");
    let peak_kib = w.peak_rss_kib();

    // The stalled client was cut while it was not reading: its rows are freed. Memory comes
    // back near where it started (generous: three budgets above the idle baseline).
    let limit_kib = baseline_kib + 3 * BUDGET_MIB * 1024;
    let settled = wait_until(Duration::from_secs(15), || async {
        w.rss_kib() < limit_kib
    })
    .await;
    let after_kib = w.rss_kib();
    let (_, metrics) = support::get(&w.url("/metrics")).await;
    assert_eq!(
        support::metric(&metrics, "walcast_clients_over_budget_total"),
        Some(1.0),
        "exactly the stalled client was cut for its budget"
    );
    // Now it reads: what its socket held, then `lagged` with a cursor, then 4008.
    let none = AtomicUsize::new(0);
    let cut = read_all(&mut stalled, ROWS, &none).await;
    let lagged = cut
        .lagged
        .clone()
        .unwrap_or_else(|| panic!("no lagged frame: {cut:?}"));
    assert_eq!(cut.close, Some(4008), "{cut:?}");
    assert!(
        cut.rows.len() < ROWS / 2,
        "cut after {} of {ROWS} rows of 1 MB: the budget is {BUDGET_MIB} MiB",
        cut.rows.len()
    );
    assert_eq!(
        cut.rows,
        (0..cut.rows.len() as u64).collect::<Vec<_>>(),
        "rows before the cut arrive in order"
    );
    let cursor = lagged["cursor"].as_str().expect("cursor").to_owned();
    if let Some(last) = cut.cursors.last() {
        assert_eq!(&cursor, last, "the lagged cursor is the last row sent");
    }
    // Resuming from the cursor on a new connection gives exactly the rest.
    let mut again = stalled_client(&w.addr).await;
    again
        .send(Message::text(
            json!({"type": "resume", "cursor": cursor}).to_string(),
        ))
        .await
        .expect("resume");
    let rest = read_all(&mut again, ROWS, &none).await;
    assert!(rest.resumed.is_some(), "{rest:?}");
    let mut all = cut.rows.clone();
    all.extend(&rest.rows);
    assert_eq!(all, (0..ROWS as u64).collect::<Vec<_>>(), "cut + resumed");
    eprintln!(
        "memory: RSS idle {baseline_kib} KiB, peak {peak_kib} KiB, after the cut {after_kib} KiB \
         (limit {limit_kib} KiB); stalled client cut after {} rows",
        cut.rows.len()
    );
    assert!(
        settled,
        "RSS {after_kib} KiB stayed above idle {baseline_kib} KiB + 3 x {BUDGET_MIB} MiB after the cut (peak {peak_kib} KiB)"
    );
}

/// Connects to the Realtime endpoint as `service_role` (serializer 1.0.0), with a 4 KiB receive
/// buffer when `small`, and joins `realtime:mem` for every INSERT.
async fn realtime_client(addr: &str, small: bool) -> Socket {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if small {
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    }
    let stream = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    let url = format!(
        "ws://{addr}/realtime/v1/websocket?apikey={}&vsn=1.0.0",
        support::service_key()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    let join = json!({
        "topic": "realtime:mem", "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": {"config": {"postgres_changes": [
            {"event": "INSERT", "schema": "public", "table": "monitoring_events"}
        ]}},
    });
    ws.send(Message::text(join.to_string()))
        .await
        .expect("join");
    loop {
        let f = next_json(&mut ws).await.expect("join answers");
        if f["event"] == "system" {
            assert_eq!(f["payload"]["status"], "ok", "{f}");
            return ws;
        }
    }
}

/// What a Realtime client read: the `i` of each change, the `system` error, the close code.
#[derive(Debug, Default)]
struct RtRead {
    /// `data.i` of each change, in order.
    rows: Vec<u64>,
    /// The `system` error message, if any.
    system_error: Option<String>,
    /// Close code.
    close: Option<u16>,
}

/// Reads Realtime frames until the close (or `until` changes), counting in `progress`.
async fn read_realtime(ws: &mut Socket, until: usize, progress: &AtomicUsize) -> RtRead {
    let mut read = RtRead::default();
    while read.rows.len() < until {
        let msg = match tokio::time::timeout(Duration::from_secs(120), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            _ => break,
        };
        match msg {
            Message::Text(t) if t.contains(r#""event":"postgres_changes""#) => {
                let at = t.find(r#""i":"#).expect("row number") + 4;
                let digits: String = t[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
                read.rows.push(digits.parse().expect("number"));
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["event"] == "system" && v["payload"]["status"] == "error" {
                    read.system_error = v["payload"]["message"].as_str().map(str::to_owned);
                }
            }
            Message::Close(f) => {
                read.close = f.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_realtime_socket_is_cut_at_its_byte_budget_while_a_reader_gets_every_row() {
    let db = support::fresh_db().await;
    let budget = format!("{BUDGET_MIB}MiB");
    let w = Walcast::start_with_env(
        &db,
        &["--client-queue-bytes", &budget],
        &[("WALCAST_JWT_SECRET", support::SECRET)],
    )
    .await;
    let mut stalled = realtime_client(&w.addr, true).await;
    let mut reader = realtime_client(&w.addr, false).await;
    let got = Arc::new(AtomicUsize::new(0));
    let reader_task = {
        let got = Arc::clone(&got);
        tokio::spawn(async move { read_realtime(&mut reader, ROWS, &got).await })
    };
    let sql = db.client().await;
    for i in 0..ROWS {
        let caught_up = wait_until(Duration::from_secs(120), || {
            let got = Arc::clone(&got);
            async move { got.load(Ordering::Relaxed) + AHEAD >= i }
        })
        .await;
        assert!(
            caught_up,
            "the reading socket stopped at {} rows",
            got.load(Ordering::Relaxed)
        );
        sql.execute(
            "insert into public.monitoring_events (event_type, source, data) \
             values ('big', 'memory-test', jsonb_build_object('i', $1::int, 'pad', repeat('x', $2::int)))",
            &[&(i as i32), &(ROW_BYTES as i32)],
        )
        .await
        .expect("insert");
    }
    let read = reader_task.await.expect("reader");
    assert_eq!(
        read.rows,
        (0..ROWS as u64).collect::<Vec<_>>(),
        "{:?}",
        read.system_error
    );
    let none = AtomicUsize::new(0);
    let cut = read_realtime(&mut stalled, ROWS, &none).await;
    assert_eq!(cut.close, Some(4008), "{cut:?}");
    assert!(
        cut.system_error
            .as_deref()
            .is_some_and(|m| m.starts_with("Too many messages: this client fell behind")),
        "{cut:?}"
    );
    assert!(
        cut.rows.len() < ROWS / 2,
        "cut after {} rows",
        cut.rows.len()
    );
    let (_, metrics) = support::get_as(&w.url("/metrics"), None).await;
    assert_eq!(
        support::metric(&metrics, "walcast_clients_over_budget_total"),
        Some(1.0)
    );
}
