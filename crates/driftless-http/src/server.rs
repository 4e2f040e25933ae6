//! The transport: a listening socket, an accepting thread, a fixed pool of worker
//! threads fed by a bounded queue of connections, and one request per connection.
//!
//! Every bound is here: the request head is read within [`Limits::request_timeout`] and is
//! at most [`Limits::max_head_bytes`] long, with at most [`MAX_HEADERS`] headers (parsed by
//! `httparse`); no request body is accepted; a connection that finds every worker busy and
//! the queue full is answered `503` at once by the accepting thread; every answer closes
//! its connection.

use crate::http::{Method, Request, Response};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The most headers a request may have.
pub const MAX_HEADERS: usize = 32;

/// The bounds of the transport; see [`crate::ServeOptions`] for the defaults.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Worker threads: connections handled at once.
    pub(crate) workers: usize,
    /// Accepted connections waiting for a worker.
    pub(crate) queue: usize,
    /// The longest request head (request line and headers), in bytes.
    pub(crate) max_head_bytes: usize,
    /// How long a client has to send its request head.
    pub(crate) request_timeout: Duration,
    /// How long one write of the answer may block.
    pub(crate) write_timeout: Duration,
}

/// What handles one parsed request.
pub(crate) type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A running transport.
pub(crate) struct Transport {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl Transport {
    /// Starts accepting on `listener`, handling requests with `handler`.
    pub(crate) fn start(listener: TcpListener, limits: Limits, handler: Arc<Handler>) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = bounded::<TcpStream>(limits.queue);
        let mut workers = Vec::with_capacity(limits.workers);
        for i in 0..limits.workers {
            let rx: Receiver<TcpStream> = rx.clone();
            let handler = Arc::clone(&handler);
            let spawned = std::thread::Builder::new().name(format!("driftless-http-{i}")).spawn(move || {
                for stream in rx {
                    serve_connection(stream, &limits, handler.as_ref());
                }
            });
            match spawned {
                Ok(w) => workers.push(w),
                Err(e) => {
                    drop(tx);
                    join_all(workers);
                    return Err(e);
                }
            }
        }
        drop(rx);
        let stop_flag = Arc::clone(&stop);
        let acceptor = std::thread::Builder::new()
            .name("driftless-http-accept".into())
            .spawn(move || accept_loop(&listener, &tx, &stop_flag, &limits));
        let acceptor = match acceptor {
            Ok(a) => a,
            Err(e) => {
                join_all(workers);
                return Err(e);
            }
        };
        Ok(Self { addr, stop, acceptor: Some(acceptor), workers })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets the workers finish the connections they have, and joins every
    /// thread.
    pub(crate) fn stop(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // The acceptor is blocked in `accept`: a connection of our own wakes it.
        let _ = TcpStream::connect_timeout(&wake_address(self.addr), Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        join_all(std::mem::take(&mut self.workers));
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
    }
}

fn join_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.join();
    }
}

/// Where to connect to reach a listener bound to `addr` (an unspecified address is
/// reached through the loopback address of its family).
fn wake_address(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

fn accept_loop(listener: &TcpListener, tx: &Sender<TcpStream>, stop: &AtomicBool, limits: &Limits) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => match tx.try_send(stream) {
                Ok(()) => {}
                Err(TrySendError::Full(stream)) => {
                    metrics::counter!(crate::metric_names::REJECTED_CONNECTIONS_TOTAL).increment(1);
                    let busy = Response::error(
                        503,
                        "busy",
                        "every worker of the service is busy and its queue is full; try again shortly",
                    )
                    .with_header("Retry-After", "1");
                    answer_and_close(stream, &busy, limits);
                }
                Err(TrySendError::Disconnected(_)) => return,
            },
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(error = %e, "the HTTP service could not accept a connection");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads one request from `stream`, answers it and closes the connection.
fn serve_connection(stream: TcpStream, limits: &Limits, handler: &Handler) {
    let peer = stream.peer_addr().ok();
    let mut stream = stream;
    let response = match read_request(&mut stream, limits, peer) {
        Ok(request) => {
            let started = Instant::now();
            let response = catch_unwind(AssertUnwindSafe(|| handler(&request))).unwrap_or_else(|_| {
                tracing::error!(path = %request.path, "a request handler panicked");
                Response::error(500, "internal", "the service failed while answering; see its log")
            });
            tracing::debug!(
                method = request.method.as_str(),
                path = %request.path,
                status = response.status,
                seconds = started.elapsed().as_secs_f64(),
                "answered"
            );
            response
        }
        Err(Refusal::Gone) => return,
        Err(Refusal::Answer(response)) => response,
    };
    answer_and_close(stream, &response, limits);
}

/// Writes `response`, then closes the connection without resetting it: whatever the
/// client still sends (a refused body) is read and dropped for a moment, so that it reads
/// the answer rather than a reset.
fn answer_and_close(mut stream: TcpStream, response: &Response, limits: &Limits) {
    let _ = stream.set_write_timeout(Some(limits.write_timeout));
    if response.write_to(&mut stream).and_then(|()| stream.flush()).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 256 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Why no handler sees a request.
enum Refusal {
    /// The client went away before sending a request: nothing to answer.
    Gone,
    /// The request is refused with this answer.
    Answer(Response),
}

fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::Answer(Response::error(status, code, message))
}

/// Reads and parses the request head within the limits.
fn read_request(
    stream: &mut TcpStream,
    limits: &Limits,
    peer: Option<SocketAddr>,
) -> Result<Request, Refusal> {
    let deadline = Instant::now() + limits.request_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(&buf));
        }
        let _ = stream.set_read_timeout(Some(left));
        // Never read past the limit (and one byte more, to know it was passed).
        let room = (limits.max_head_bytes + 1).saturating_sub(buf.len()).min(chunk.len());
        let Some(into) = chunk.get_mut(..room) else { return Err(too_large(limits)) };
        let n = match stream.read(into) {
            Ok(0) if buf.is_empty() => return Err(Refusal::Gone),
            Ok(0) => {
                return Err(refuse(400, "bad_request", "the request ended before its head was complete"))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(timed_out(&buf));
            }
            Err(_) => return Err(Refusal::Gone),
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => return request_of(&parsed, peer),
            Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
                return Err(too_large(limits))
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(refuse(
                    431,
                    "too_many_headers",
                    format!("the request has more than {MAX_HEADERS} headers"),
                ));
            }
            Err(e) => {
                return Err(refuse(400, "bad_request", format!("the request is not valid HTTP/1.1: {e}")))
            }
        }
    }
}

fn timed_out(buf: &[u8]) -> Refusal {
    if buf.is_empty() {
        Refusal::Gone
    } else {
        refuse(408, "timeout", "the request head did not arrive in time")
    }
}

fn too_large(limits: &Limits) -> Refusal {
    refuse(
        431,
        "head_too_large",
        format!("the request line and headers are longer than {} bytes", limits.max_head_bytes),
    )
}

/// The request of a complete parse, or why it is refused.
fn request_of(parsed: &httparse::Request<'_, '_>, peer: Option<SocketAddr>) -> Result<Request, Refusal> {
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Err(refuse(400, "bad_request", "the request line is incomplete"));
    };
    let mut body = false;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            body = true;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
            match length {
                Some(0) => {}
                Some(_) => body = true,
                None => return Err(refuse(400, "bad_request", "the Content-Length header is not a number")),
            }
        }
    }
    if body {
        return Err(refuse(
            413,
            "body_not_accepted",
            "this service takes no request body; put parameters in the query",
        ));
    }
    let Some(path) = target.strip_prefix('/').map(|_| target) else {
        return Err(refuse(400, "bad_request", "the request target must be a path starting with /"));
    };
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (path.to_owned(), String::new()),
    };
    Ok(Request { method: Method::of(method), path, query, peer })
}
