//! Server-sent-event streaming of deliveries with credit-based backpressure.
//!
//! A client opens `GET …/members/{member}/stream?credit=N` and grants more credit with
//! `POST …/members/{member}/credit`. Each SSE message is `event: delivery` with the delivery as
//! JSON `data`; acknowledgements go through `/ack` as usual. A broker error ends the stream with
//! one `event: error` message holding a problem document.
//!
//! Invariants:
//! - the server never sends more deliveries than the credit granted: a fetch asks for at most
//!   the available credit, and the credit is spent by what it returned before anything is sent;
//! - memory per stream is bounded: credit is capped at `stream_credit_max`, each fetch at
//!   [`FETCH_CHUNK`] deliveries, and the channel to the connection at [`CHANNEL_EVENTS`]; a slow
//!   reader blocks the pump, which then fetches nothing more;
//! - one stream per member at a time (a second one is refused with 409); the stream's
//!   registration is removed when its pump ends, whatever the reason;
//! - while the stream is open and idle the pump heartbeats the member, so an open stream is a
//!   live member; when the client disconnects, deliveries it never received are redelivered
//!   after their visibility timeout.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::problem::Problem;
use crate::routes::{blocking, instant_for};
use crate::AppState;

/// Most deliveries one fetch of a stream asks for.
pub const FETCH_CHUNK: u64 = 500;
/// Messages buffered between the pump and the connection.
pub const CHANNEL_EVENTS: usize = 16;
/// Interval of SSE keep-alive comments.
pub const KEEPALIVE_COMMENT: Duration = Duration::from_secs(15);

/// A stream's outstanding credit.
#[derive(Debug, Default)]
pub(crate) struct Credit {
    available: Mutex<u64>,
    granted: Notify,
}

impl Credit {
    fn lock(&self) -> MutexGuard<'_, u64> {
        self.available.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `n`, capped at `max`; returns the credit now available.
    fn add(&self, n: u64, max: u64) -> u64 {
        let mut a = self.lock();
        *a = a.saturating_add(n).min(max);
        let now = *a;
        drop(a);
        self.granted.notify_one();
        now
    }

    fn available(&self) -> u64 {
        *self.lock()
    }

    fn spend(&self, n: u64) {
        let mut a = self.lock();
        *a = a.saturating_sub(n);
    }
}

fn streams(state: &AppState) -> MutexGuard<'_, HashMap<(String, String), Arc<Credit>>> {
    state.streams.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the stream's registration when the pump ends.
struct Registration {
    state: Arc<AppState>,
    key: (String, String),
    credit: Arc<Credit>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut s = streams(&self.state);
        if s.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &self.credit)) {
            s.remove(&self.key);
        }
    }
}

/// The receiving end of the pump, as the `Stream` axum's `Sse` wants.
struct Deliveries(mpsc::Receiver<SseEvent>);

impl futures_core::Stream for Deliveries {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_recv(cx).map(|e| e.map(Ok))
    }
}

/// Query of `GET …/stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Initial credit (capped at `stream_credit_max`); 0 sends nothing until credit is posted.
    #[serde(default)]
    pub credit: u64,
}

/// `GET /v1/groups/{group}/members/{member}/stream?credit=N`.
pub async fn open(
    State(state): State<Arc<AppState>>,
    ApiPath((group, member)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Response, Problem> {
    let (g, m) = (group.clone(), member.clone());
    blocking(&state, move |b| b.heartbeat(&g, &m)).await?;
    let key = (group, member);
    let credit = Arc::new(Credit::default());
    credit.add(q.credit, state.stream_credit_max);
    {
        let mut s = streams(&state);
        if s.contains_key(&key) {
            let mut p = Problem::new(
                StatusCode::CONFLICT,
                "stream-open",
                "Stream already open",
                format!("member {} of group {} already has an open stream", key.1, key.0),
            )
            .with_group(&key.0);
            p.at.member = Some(key.1.clone());
            return Err(p);
        }
        s.insert(key.clone(), Arc::clone(&credit));
    }
    let registration = Registration { state: Arc::clone(&state), key, credit };
    let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
    tokio::spawn(pump(registration, tx));
    Ok(Sse::new(Deliveries(rx))
        .keep_alive(KeepAlive::new().interval(KEEPALIVE_COMMENT))
        .into_response())
}

/// Fetches as much as the credit allows and sends it, until the client leaves, the member is
/// gone, or the server shuts down.
async fn pump(reg: Registration, tx: mpsc::Sender<SseEvent>) {
    let state = &reg.state;
    let (group, member) = &reg.key;
    let mut stopping = state.shutdown.subscribe();
    loop {
        if state.shutting_down() || tx.is_closed() {
            return;
        }
        let available = reg.credit.available();
        if available == 0 {
            tokio::select! {
                () = reg.credit.granted.notified() => {}
                () = tokio::time::sleep(state.keepalive()) => {
                    let (g, m) = (group.clone(), member.clone());
                    if let Err(p) = blocking(state, move |b| b.heartbeat(&g, &m)).await {
                        send_problem(&tx, &p).await;
                        return;
                    }
                }
                () = tx.closed() => return,
                _ = stopping.changed() => return,
            }
            continue;
        }
        let listener = state.broker.listen(group);
        let (g, m) = (group.clone(), member.clone());
        let want = usize::try_from(available.min(FETCH_CHUNK)).unwrap_or(1);
        let fetched = match blocking(state, move |b| b.fetch_raw(&g, &m, want)).await {
            Ok(f) => f,
            Err(p) => {
                send_problem(&tx, &p).await;
                return;
            }
        };
        if fetched.deliveries.is_empty() {
            let mut wake = Instant::now() + state.keepalive();
            if let Some(due) = fetched.next_due_ms {
                wake = wake.min(instant_for(due));
            }
            tokio::select! {
                () = listener => {}
                () = tokio::time::sleep_until(wake) => {}
                () = tx.closed() => return,
                _ = stopping.changed() => return,
            }
            continue;
        }
        reg.credit.spend(u64::try_from(fetched.deliveries.len()).unwrap_or(u64::MAX));
        for d in &fetched.deliveries {
            let event = match crate::wire::delivery_sse(d) {
                Ok(json) => SseEvent::default().event("delivery").data(json),
                Err(e) => {
                    send_problem(&tx, &Problem::internal(format!("cannot encode delivery: {e}")))
                        .await;
                    return;
                }
            };
            if tx.send(event).await.is_err() {
                return; // client gone: what it did not get is redelivered after the timeout
            }
        }
    }
}

async fn send_problem(tx: &mpsc::Sender<SseEvent>, p: &Problem) {
    if let Ok(e) = SseEvent::default().event("error").json_data(p) {
        let _ = tx.send(e).await;
    }
}

/// Body of `POST …/credit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditBody {
    /// Deliveries the client is ready for, in addition to its outstanding credit.
    pub credit: u64,
}

/// Answer of `POST …/credit`.
#[derive(Debug, Serialize)]
pub struct CreditResponse {
    /// Outstanding credit after the grant (capped at `stream_credit_max`).
    pub credit: u64,
}

/// `POST /v1/groups/{group}/members/{member}/credit`.
pub async fn add_credit(
    State(state): State<Arc<AppState>>,
    ApiPath((group, member)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<CreditBody>,
) -> Result<Json<CreditResponse>, Problem> {
    let credit = streams(&state).get(&(group.clone(), member.clone())).cloned();
    let Some(credit) = credit else {
        let mut p = Problem::not_found(
            "no-open-stream",
            "No open stream",
            format!(
                "member {member} of group {group} has no open stream; open \
                 GET /v1/groups/{group}/members/{member}/stream first"
            ),
        )
        .with_group(&group);
        p.at.member = Some(member);
        return Err(p);
    };
    let now = credit.add(body.credit, state.stream_credit_max);
    Ok(Json(CreditResponse { credit: now }))
}
