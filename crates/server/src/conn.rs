//! The accept loop: every TCP connection is driven by hyper's HTTP/1 connection directly (not
//! `axum::serve`), so that each one has timeouts and a slot under a bound.
//!
//! A connection is always in one of three phases, and each has its limit:
//! - **idle** (accepted, or its last response ended, and no byte of a next request has come):
//!   closed after `keep_alive_idle_ms`;
//! - **reading a request head** (a byte has come, the head is not complete): closed after
//!   `header_read_timeout_ms` from that first byte — a slowloris sending one header byte at a
//!   time holds a slot no longer than that;
//! - **serving a request** (from the complete head until the response body's end): no overall
//!   timeout, because long-polls and SSE streams are long by design and end on their own
//!   (long-polls after `fetch_wait_ms_max`, streams when the client leaves or at shutdown); the
//!   request *body* is bounded by the extractor (`extract::Body`), which must read all of it
//!   within `body_read_timeout_ms`, else answers 408 and the connection closes; and a response
//!   write that makes no progress for `response_write_timeout_ms` (the client stopped reading)
//!   closes the connection.
//!
//! Invariants:
//! - at most `connections_max` connections are served: at the bound the loop accepts one more
//!   client and holds it (one descriptor) without reading it, and every connection idle for at
//!   least [`RECLAIM_IDLE_MIN`] closes (asked again every [`RECLAIM_RETRY`]), so an idle flood
//!   cannot lock clients (or `/healthz`) out; further clients wait in the kernel's listen
//!   backlog, unaccepted, holding nothing of ours, until a slot frees. Accepting and closing
//!   them instead would turn a burst into errors for well-behaved clients, and an idle
//!   connection closed by the server is one every HTTP client expects and reopens;
//! - a slot is held exactly as long as its connection task runs (the permit moves into it), so
//!   "every slot free" is "every connection closed", which graceful shutdown waits for;
//! - shutdown: the loop stops accepting, every connection is told to finish (an idle one closes
//!   at once, one serving a request closes after its response; long-polls and streams end
//!   themselves on the same signal), and [`serve`] returns when all are closed;
//! - a failed `accept` (out of file descriptors, say) is logged and retried after a pause,
//!   never a busy loop and never the end of the server;
//! - under TLS (`tls.rs`) the handshake happens in the connection's task, holding its slot, and
//!   must finish within `header_read_timeout_ms` (a client that opens and never says hello holds
//!   a slot no longer than a slowloris), and at the bound one unfinished for [`RECLAIM_IDLE_MIN`]
//!   is closed for a waiting client like an idle connection; a failed handshake closes the
//!   connection, so a plaintext request to the https port gets no answer;
//! - a response sent before its request's body was read to the end (a guard or authentication
//!   refusal, a body over the limit or too slow) carries `Connection: close`: hyper closes such a
//!   connection anyway, and a client must not pool it (see `ReadToEnd`);
//! - every request carries the connection's [`PeerIdentity`] (`tls`, and the verified client
//!   certificate's subject under mutual TLS) as an extension.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::peer::PeerIdentity;

/// The connection limits of the `[server]` table.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub connections_max: usize,
    /// Longest from a request's first byte to its complete head.
    pub header_read_timeout: Duration,
    /// Longest a connection may sit idle between requests (or before its first).
    pub keep_alive_idle: Duration,
    /// Longest a response write may make no progress (the client stopped reading).
    pub response_write_stall: Duration,
}

/// Pause after a failed `accept` (typically EMFILE), so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// At the bound, connections idle at least this long are closed for a waiting client (younger
/// ones are likely about to send their request).
const RECLAIM_IDLE_MIN: Duration = Duration::from_millis(250);
/// At the bound, how often a waiting client asks again for idle connections to close.
const RECLAIM_RETRY: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `stopping` becomes true, then waits for every connection to
/// close (the caller bounds that wait with its grace period).
/// With `tls`, every connection speaks TLS (and only TLS).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    mut stopping: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    // Bumped when a client was accepted but every slot is taken: idle connections then close.
    let reclaim = watch::channel(0u64).0;
    'accept: loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(
                        "cannot accept a connection: {e}; retrying in {} ms (if this is \"Too \
                         many open files\", raise the open-file limit or lower \
                         server.connections_max)",
                        ACCEPT_RETRY.as_millis()
                    );
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            () = stopped(&mut stopping) => break,
        };
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => loop {
                // Every slot is taken and a client is waiting: connections idle for at least
                // `RECLAIM_IDLE_MIN` close (an idle flood cannot lock clients out), and the
                // client is served as soon as a slot frees.
                reclaim.send_modify(|n| *n = n.wrapping_add(1));
                tokio::select! {
                    p = Arc::clone(&slots).acquire_owned() => match p {
                        Ok(p) => break p,
                        Err(_) => break 'accept, // never closed
                    },
                    () = tokio::time::sleep(RECLAIM_RETRY) => {}
                    () = stopped(&mut stopping) => break 'accept,
                }
            },
        };
        // Deliveries and SSE messages are small and latency-bound.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let mut stopping = stopping.clone();
        let mut reclaim = reclaim.subscribe();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    connection(stream, PeerIdentity::default(), app, limits, stopping, reclaim)
                        .await
                }
                Some(acceptor) => {
                    let accepted_at = Instant::now();
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    let mut handshake = std::pin::pin!(handshake);
                    let mut reclaim_open = true;
                    let stream = loop {
                        tokio::select! {
                            done = &mut handshake => break match done {
                                Ok(Ok(s)) => Some(s),
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!(
                                        %peer,
                                        limit = "header_read_timeout_ms",
                                        "TLS handshake not complete in time"
                                    );
                                    None
                                }
                            },
                            () = stopped(&mut stopping) => break None,
                            // A handshake still unfinished after `RECLAIM_IDLE_MIN` yields its
                            // slot to a waiting client, as an idle connection does: a flood of
                            // silent connects cannot lock clients out for the header timeout.
                            r = reclaim.changed(), if reclaim_open => {
                                reclaim_open = r.is_ok();
                                if reclaim_open && accepted_at.elapsed() >= RECLAIM_IDLE_MIN {
                                    tracing::debug!(%peer, limit = "connections_max", "closing an unfinished TLS handshake");
                                    break None;
                                }
                            }
                        }
                    };
                    if let Some(stream) = stream {
                        let identity = crate::tls::peer_identity(stream.get_ref().1);
                        connection(stream, identity, app, limits, stopping, reclaim).await;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener); // no new connections from here: they are refused, not left waiting
                    // Every slot free means every connection closed.
    let all = u32::try_from(limits.connections_max).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// Completes once shutdown has started (or its sender is gone). The guard `wait_for` returns
/// is dropped here: it is not `Send`, and a `select!` would hold it across later awaits.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// What a connection is doing, shared by its IO, its service and its watchdog.
#[derive(Debug)]
struct Activity {
    /// Requests whose response has not ended (0 or 1 on HTTP/1 without pipelining).
    in_flight: AtomicUsize,
    /// A byte arrived while no request was in flight: a request head is being read.
    head_started: AtomicBool,
    /// When the connection became idle (accepted, or its last response ended), or when the
    /// first byte of a request head came.
    since: Mutex<Instant>,
    /// Since when a write to the socket has been waiting for the client to read (no progress).
    write_stalled_since: Mutex<Option<Instant>>,
    /// Pinged on every phase change.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            head_started: AtomicBool::new(false),
            since: Mutex::new(Instant::now()),
            write_stalled_since: Mutex::new(None),
            changed: Notify::new(),
        }
    }

    fn set_since(&self, at: Instant) {
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    fn since(&self) -> Instant {
        *self.since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write made progress (`stalled == false`) or is waiting for the client (`true`).
    fn write_progress(&self, stalled: bool) {
        let mut since = self.write_stalled_since.lock().unwrap_or_else(|e| e.into_inner());
        match (stalled, since.is_some()) {
            (true, false) => {
                *since = Some(Instant::now());
                drop(since);
                self.changed.notify_one();
            }
            (false, true) => *since = None,
            _ => {}
        }
    }

    fn write_stalled_since(&self) -> Option<Instant> {
        *self.write_stalled_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes were read from the socket.
    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.head_started.swap(true, Ordering::AcqRel)
        {
            self.set_since(Instant::now());
            self.changed.notify_one();
        }
    }

    /// A request head is complete; the request is served until the guard drops.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(false, Ordering::Release);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    /// Completes when the connection has been idle, or reading a head, for too long, or is idle
    /// while a client waits for a slot; returns which limit.
    async fn expired(&self, limits: &Limits, reclaim: &mut watch::Receiver<u64>) -> &'static str {
        loop {
            let changed = self.changed.notified();
            // A response still being written (hyper flushing what the body handed it) is a
            // request in progress too, not idle.
            let serving =
                self.in_flight.load(Ordering::Acquire) > 0 || self.write_stalled_since().is_some();
            let phase = if serving {
                None
            } else if self.head_started.load(Ordering::Acquire) {
                Some(("header_read_timeout_ms", limits.header_read_timeout))
            } else {
                Some(("keep_alive_idle_ms", limits.keep_alive_idle))
            };
            let idle = phase.is_some_and(|(name, _)| name == "keep_alive_idle_ms");
            match phase {
                None => match self.write_stalled_since() {
                    None => changed.await,
                    Some(stalled) => {
                        let limit = limits.response_write_stall;
                        tokio::select! {
                            () = changed => {}
                            () = tokio::time::sleep_until(stalled + limit) => {
                                if self.write_stalled_since() == Some(stalled) {
                                    return "response_write_timeout_ms";
                                }
                            }
                        }
                    }
                },
                Some((name, limit)) => {
                    let deadline = self.since() + limit;
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(deadline) => {
                            // Still the same phase since the same instant? Then it expired.
                            if self.in_flight.load(Ordering::Acquire) == 0
                                && self.write_stalled_since().is_none()
                                && Instant::now() >= self.since() + limit
                            {
                                return name;
                            }
                        }
                        r = reclaim.changed(), if idle => {
                            if r.is_err() {
                                // The accept loop is gone: no more reclaiming.
                                std::future::pending::<()>().await;
                            }
                            let still_idle = self.in_flight.load(Ordering::Acquire) == 0
                                && !self.head_started.load(Ordering::Acquire)
                                && self.write_stalled_since().is_none();
                            if still_idle && self.since().elapsed() >= RECLAIM_IDLE_MIN {
                                return "connections_max";
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A request in flight; dropping it (when the response body ends or is dropped) makes the
/// connection idle again.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.set_since(Instant::now());
        }
        a.changed.notify_one();
    }
}

/// The socket (or its TLS stream), reporting reads to the connection's [`Activity`].
struct Watched<S> {
    stream: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.activity.write_progress(polled.is_pending());
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.activity.write_progress(polled.is_pending());
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A response body that holds its request's [`InFlight`] until it ends: an SSE stream is a
/// request in flight for as long as it streams, so the idle timeout never cuts it.
struct Tracked {
    inner: AxumBody,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that records whether it was read to its end. A response sent before that
/// (an authentication or guard refusal, a body too large or too slow) leaves bytes hyper cannot
/// skip, so hyper closes the connection after it — silently, while a client that pooled the
/// connection sends its next request on it and fails with "peer disconnected". Such responses
/// therefore say `Connection: close`, so no client reuses the connection; a handler that read
/// the body (even one it ignores) keeps it alive.
struct ReadToEnd {
    inner: Incoming,
    done: Arc<AtomicBool>,
}

impl http_body::Body for ReadToEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            self.done.store(true, Ordering::Release);
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Drives one connection to its end: closed by the client, by a timeout, or by shutdown.
async fn connection<S>(
    stream: S,
    peer: PeerIdentity,
    app: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    mut reclaim: watch::Receiver<u64>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { stream, activity: Arc::clone(&activity) });
    let service_activity = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let in_flight = service_activity.request_started();
        req.extensions_mut().insert(peer.clone());
        let mut app = app.clone();
        let body_read = Arc::new(AtomicBool::new(req.body().is_end_stream()));
        let done = Arc::clone(&body_read);
        let req = req.map(|inner| AxumBody::new(ReadToEnd { inner, done }));
        async move {
            let mut response: Response<AxumBody> =
                match tower_service::Service::call(&mut app, req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
            if !body_read.load(Ordering::Acquire) {
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(
                response.map(|inner| AxumBody::new(Tracked { inner, _in_flight: in_flight })),
            )
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The head timeout is ours (it starts at the head's first byte, hyper's at the end of the
    // previous response, which would make it the idle timeout too).
    builder.keep_alive(true).header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection ended with an error: {e}");
                }
                return;
            }
            reason = activity.expired(&limits, &mut reclaim) => {
                tracing::debug!(limit = reason, "closing a connection past its timeout");
                return; // dropping the connection closes the socket
            }
            () = stopped(&mut stopping), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
