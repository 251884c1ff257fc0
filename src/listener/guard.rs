//! The client connection's bytes on their way to hyper, with the limits hyper does not enforce
//! the way a proxy must: `header_read_timeout` answered with 408 (hyper's own timeout closes
//! without a word), request heads over `max_header_bytes` answered with 431 and a reason, and
//! ambiguous framing refused with 400 before hyper sees the whole head (see [`framing`]).
//!
//! A refusal is written by the guard itself, and only once nothing else is being written: the
//! response to an earlier pipelined request finishes first. Then the guard closes its sending
//! side, reads (and drops) what the client still sends for a moment, so that the close does not
//! turn into a reset that destroys the answer before the client reads it, and reports the end
//! of the stream to hyper, which ends the connection.
//!
//! HTTP/2 connections and upgraded ones pass through untouched: HTTP/2's limits are hyper's
//! (concurrent streams, header list size, reset floods), and a tunnel is not HTTP.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::framing::{Opaque, Refusal, Scanner};
use super::ListenerStats;
use crate::health::now_ms;

/// How long a refused client is given to read the answer while what it still sends is dropped.
const LINGER: Duration = Duration::from_secs(2);
/// At most this much is read and dropped after a refusal.
const LINGER_MAX_BYTES: usize = 1 << 20;
/// While a refusal waits for an earlier response to go out, look again this often.
const RECHECK: Duration = Duration::from_millis(50);

/// What the connection's parts share: the guard inside hyper, the service, the idle timer.
#[derive(Debug)]
pub struct Activity {
    /// Requests being served: from the service call to the end (or drop) of the response body.
    in_flight: AtomicU32,
    /// `now_ms()` when the last response ended, or when the connection opened.
    last_done: AtomicU64,
    /// Part of a request head has arrived (the head timer runs, not the idle one).
    head_partial: AtomicBool,
    /// A request asked to upgrade: unless it is switched, the connection closes after it.
    pub upgrade_asked: AtomicBool,
    /// A request has been received (a draining connection that has none gets a grace period).
    pub seen_request: AtomicBool,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            in_flight: AtomicU32::new(0),
            last_done: AtomicU64::new(now_ms()),
            head_partial: AtomicBool::new(false),
            upgrade_asked: AtomicBool::new(false),
            seen_request: AtomicBool::new(false),
        }
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.seen_request.store(true, Ordering::Relaxed);
    }

    fn request_done(&self) {
        self.last_done.store(now_ms(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// `None` when the connection has been idle (nothing in flight, no head arriving) for
    /// `idle`; else how much longer it must stay so before it is.
    pub fn idle_for(&self, idle: Duration) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 || self.head_partial.load(Ordering::Relaxed) {
            return Some(idle);
        }
        let since = now_ms().saturating_sub(self.last_done.load(Ordering::Relaxed));
        let idle_ms = idle.as_millis() as u64;
        (since < idle_ms).then(|| Duration::from_millis(idle_ms - since))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// A response body that counts its request as in flight until it ends or is dropped.
pub struct Tracked<B> {
    inner: B,
    activity: Option<Arc<Activity>>,
}

impl<B> Tracked<B> {
    /// Call once the request was counted with [`Activity::request_started`].
    pub fn new(inner: B, activity: Arc<Activity>) -> Tracked<B> {
        Tracked {
            inner,
            activity: Some(activity),
        }
    }

    fn done(&mut self) {
        if let Some(a) = self.activity.take() {
            a.request_done();
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.done();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = r {
            this.done();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client limits a connection gets at accept time (a reload applies to new connections).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

enum Mode {
    /// HTTP/1: following heads and bodies.
    Scan,
    /// HTTP/2 or a tunnel: bytes pass untouched.
    Pass,
    /// Refusing: the answer, and how much of it went out.
    Refuse {
        answer: Vec<u8>,
        sent: usize,
    },
    Flush,
    Shutdown,
    /// Reading and dropping what the client still sends, until it closes or the timer fires.
    Linger {
        drained: usize,
    },
    /// Over: hyper reads the end of the stream.
    Closed,
}

pub struct Guard<IO> {
    io: IO,
    mode: Mode,
    scanner: Scanner,
    /// Runs while a head is awaited (the first one) or arriving; else none, to keep an idle
    /// connection small and its timer wheel free.
    timer: Option<Pin<Box<Sleep>>>,
    head_timeout: Duration,
    /// Everything hyper wrote has been flushed.
    out_clean: bool,
    activity: Arc<Activity>,
    stats: Arc<ListenerStats>,
}

impl<IO> Guard<IO> {
    /// `http2`: the connection speaks HTTP/2 from the start (ALPN); nothing to scan.
    /// The first request's head is due at `head_deadline`.
    pub fn new(
        io: IO,
        limits: &Limits,
        head_deadline: tokio::time::Instant,
        activity: Arc<Activity>,
        stats: Arc<ListenerStats>,
        http2: bool,
    ) -> Guard<IO> {
        Guard {
            io,
            mode: if http2 { Mode::Pass } else { Mode::Scan },
            scanner: Scanner::new(limits.max_header_bytes),
            timer: (!http2).then(|| Box::pin(tokio::time::sleep_until(head_deadline))),
            head_timeout: limits.header_read_timeout,
            out_clean: true,
            activity,
            stats,
        }
    }

    fn after_read(&mut self) {
        if let Some(why) = self.scanner.opaque() {
            if why == Opaque::Upgrade {
                self.activity.upgrade_asked.store(true, Ordering::Relaxed);
            }
            self.mode = Mode::Pass;
            self.timer = None;
            self.activity.head_partial.store(false, Ordering::Relaxed);
            return;
        }
        let in_head = self.scanner.in_head();
        let awaited = in_head || self.scanner.heads() == 0;
        if awaited && self.timer.is_none() {
            // A head began in this read and did not end in it.
            self.timer = Some(Box::pin(tokio::time::sleep(self.head_timeout)));
        } else if !awaited && self.timer.is_some() {
            self.timer = None;
        }
        if in_head != self.activity.head_partial.load(Ordering::Relaxed) {
            self.activity.head_partial.store(in_head, Ordering::Relaxed);
        }
    }

    fn refuse(&mut self, why: Refusal) {
        self.stats.client_errors.count(why.label());
        tracing::debug!(listener = %self.stats.name, status = why.status(), reason = why.body().trim_end(), "request refused");
        self.activity.head_partial.store(false, Ordering::Relaxed);
        self.timer = None;
        self.mode = Mode::Refuse {
            answer: answer(why),
            sent: 0,
        };
    }
}

/// The whole answer to a refused request, ending the connection.
fn answer(why: Refusal) -> Vec<u8> {
    let body = why.body();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\ndate: {}\r\nvia: 1.1 waypost\r\n\r\n{body}",
        why.status(),
        why.reason_phrase(),
        body.len(),
        crate::cache::rules::fmt_http_date(crate::clock::wall()),
    )
    .into_bytes()
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Guard<IO> {
    /// Read and drop what the client sends. Ready: it closed, failed, or sent too much.
    fn drain(&mut self, cx: &mut Context<'_>, drained: &mut usize) -> Poll<()> {
        let mut scratch = [0u8; 4096];
        loop {
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    *drained += rb.filled().len();
                    if *drained > LINGER_MAX_BYTES {
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn timer_fired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// Drive a refusal to its end; hyper's read returns the end of the stream once it is over.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match std::mem::replace(&mut self.mode, Mode::Closed) {
                Mode::Refuse { answer, mut sent } => {
                    let busy = self.activity.in_flight.load(Ordering::Relaxed) > 0 || !self.out_clean;
                    if sent == 0 && busy {
                        // The response to an earlier request is still going out; it finishes
                        // first. poll_flush wakes us once it has, the timer in case it does not.
                        let mut drained = 0;
                        if self.drain(cx, &mut drained).is_ready() {
                            continue; // the client left: nothing to answer
                        }
                        self.mode = Mode::Refuse { answer, sent };
                        if self.timer.is_none() || self.timer_fired(cx) {
                            self.timer = Some(Box::pin(tokio::time::sleep(RECHECK)));
                            let _ = self.timer_fired(cx);
                        }
                        return Poll::Pending;
                    }
                    while sent < answer.len() {
                        match Pin::new(&mut self.io).poll_write(cx, &answer[sent..]) {
                            Poll::Ready(Ok(n)) if n > 0 => sent += n,
                            Poll::Ready(_) => break,
                            Poll::Pending => {
                                self.mode = Mode::Refuse { answer, sent };
                                return Poll::Pending;
                            }
                        }
                    }
                    if sent == answer.len() {
                        self.mode = Mode::Flush;
                    }
                }
                Mode::Flush => match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Pending => {
                        self.mode = Mode::Flush;
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) => self.mode = Mode::Shutdown,
                    Poll::Ready(Err(_)) => {}
                },
                Mode::Shutdown => match Pin::new(&mut self.io).poll_shutdown(cx) {
                    Poll::Pending => {
                        self.mode = Mode::Shutdown;
                        return Poll::Pending;
                    }
                    Poll::Ready(_) => {
                        self.timer = Some(Box::pin(tokio::time::sleep(LINGER)));
                        self.mode = Mode::Linger { drained: 0 };
                    }
                },
                Mode::Linger { mut drained } => {
                    if self.drain(cx, &mut drained).is_pending() && !self.timer_fired(cx) {
                        self.mode = Mode::Linger { drained };
                        return Poll::Pending;
                    }
                    self.timer = None;
                }
                Mode::Closed | Mode::Scan | Mode::Pass => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guard<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.mode {
            Mode::Pass => return Pin::new(&mut this.io).poll_read(cx, buf),
            Mode::Scan => {}
            _ => return this.poll_refusal(cx),
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => {
                if this.timer_fired(cx) {
                    this.refuse(Refusal::HeadTimeout);
                    return this.poll_refusal(cx);
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if fresh.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                match this.scanner.feed(fresh) {
                    Ok(()) => {
                        this.after_read();
                        Poll::Ready(Ok(()))
                    }
                    Err((at, why)) => {
                        // hyper gets what came before the refused head's end, never all of it.
                        buf.set_filled(before + at);
                        this.refuse(why);
                        if at > 0 {
                            return Poll::Ready(Ok(()));
                        }
                        this.poll_refusal(cx)
                    }
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guard<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.mode {
            Mode::Pass => Pin::new(&mut this.io).poll_write(cx, data),
            Mode::Scan | Mode::Refuse { sent: 0, .. } => {
                let r = Pin::new(&mut this.io).poll_write(cx, data);
                if let Poll::Ready(Ok(n)) = r {
                    this.out_clean &= n == 0;
                }
                r
            }
            // The refusal's answer owns the sending side now.
            _ => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.mode {
            Mode::Pass => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
            Mode::Scan | Mode::Refuse { sent: 0, .. } => {
                let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
                if let Poll::Ready(Ok(n)) = r {
                    this.out_clean &= n == 0;
                }
                r
            }
            _ => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.mode {
            Mode::Pass => Pin::new(&mut this.io).poll_flush(cx),
            Mode::Scan | Mode::Refuse { sent: 0, .. } => {
                let r = Pin::new(&mut this.io).poll_flush(cx);
                if let Poll::Ready(Ok(())) = r {
                    this.out_clean = true;
                    if matches!(this.mode, Mode::Refuse { .. }) {
                        // A refusal may be waiting for exactly this.
                        cx.waker().wake_by_ref();
                    }
                }
                r
            }
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.mode {
            Mode::Pass | Mode::Scan | Mode::Refuse { sent: 0, .. } | Mode::Flush | Mode::Shutdown => {
                Pin::new(&mut this.io).poll_shutdown(cx)
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}
