//! The native front end of the gRPC server (`server.front` drives it from Python).
//!
//! Two of them: `TonicFront` (src/grpc.rs: tonic's gRPC framing, TLS through rustls, request metadata) and `Front`,
//! below, the first one, which hand-writes the gRPC protocol over hyper (IG_SERVER_FRONT=native-legacy), kept
//! until the tonic one has proven itself; they share the method table, the flag reader, grpc-timeout and bind.
//!
//! It owns the public port. Unary calls of the methods it is given are answered here: HTTP/2, gRPC framing,
//! deadlines, size and concurrency limits run in Rust, and the call itself (validation, auth, metrics, the
//! search, the answer) runs in Python through one `dispatch(method, request_bytes, authorization, timeout_s)
//! -> (status_code, details, response_bytes)` callable: queries on the I/O thread that read them, calls that
//! may wait (on Neo4j; also a query whose request sets a flag that makes it read the graph, such as `explain`) on
//! a bounded pool of their own. Every other call (streams, health, reflection) is
//! forwarded to grpc's Python server on a loopback port.
//!
//! Why: on two cores grpc's Python server spent ~140-275 us of CPU per call on transport alone (an echo) and
//! more in thread switches, more than the FAISS search a `SimilarItems` call exists for (bench.serving).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

type ResponseBody = BoxBody<Bytes, hyper::Error>;

// gRPC status codes used here (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
const OK: u32 = 0;
const CANCELLED: u32 = 1;
const DEADLINE_EXCEEDED: u32 = 4;
const RESOURCE_EXHAUSTED: u32 = 8;
const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;
pub(crate) const DEADLINE_PASSED: &str = "Deadline Exceeded";
pub(crate) const INTERNAL_ERROR: &str = "internal error; the server log has the details";

mod grpc;
mod metadata;
mod tls;

#[derive(Clone, Copy)]
pub(crate) struct Method {
    pub(crate) index: usize,
    pub(crate) waits: bool,
    /// A top-level bool field of the request (its field number; 0 = none) whose being set makes the call one
    /// that may wait: `SimilarItems` with `explain` reads the graph, without it only the index.
    pub(crate) waits_if: u32,
}

impl Method {
    pub(crate) fn waits_for(&self, message: &[u8]) -> bool {
        self.waits || (self.waits_if != 0 && flag_set(message, self.waits_if))
    }
}

fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Whether the top-level varint field `field` of a protobuf message is set to a non-zero value (the last
/// occurrence wins, as in protobuf). A message this cannot read counts as set: the call then runs where a slow
/// one may, and Python's parser gives the error.
fn flag_set(message: &[u8], field: u32) -> bool {
    let mut at = 0;
    let mut set = false;
    while at < message.len() {
        let Some(key) = varint(message, &mut at) else { return true };
        let skip = match key & 7 {
            0 => match varint(message, &mut at) {
                Some(value) => {
                    if key >> 3 == u64::from(field) {
                        set = value != 0;
                    }
                    0
                }
                None => return true,
            },
            1 => 8,
            2 => match varint(message, &mut at) {
                Some(length) => length,
                None => return true,
            },
            5 => 4,
            _ => return true,  // groups: not in this API
        };
        match usize::try_from(skip).ok().and_then(|skip| at.checked_add(skip)) {
            Some(next) if next <= message.len() => at = next,
            _ => return true,
        }
    }
    set
}

struct Shared {
    methods: HashMap<String, Method>,
    dispatch: Py<PyAny>,
    /// Threads for the calls that may wait (on Neo4j): they never hold up the I/O threads, which run queries.
    waiting: Arc<Semaphore>,
    /// Calls in flight, answered here or forwarded (IG_SERVER_MAX_CONCURRENT_RPCS).
    calls: Arc<Semaphore>,
    max_message: usize,
    backend: Client<HttpConnector, Incoming>,
    backend_authority: String,
}

/// One message then the trailers: the body of a successful unary answer.
struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Unary {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// A forwarded call's answer, holding its place among the concurrent calls until it is sent.
struct Held {
    inner: ResponseBody,
    _call: OwnedSemaphorePermit,
}

impl Body for Held {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) const TOO_MANY: &str = "too many concurrent RPCs on this server process; retry later";

/// grpc-message is percent-encoded: printable ASCII except '%' passes as is.
fn percent_encode(details: &str) -> HeaderValue {
    let mut out = String::with_capacity(details.len());
    for b in details.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn grpc_response(code: u32, details: &str, message: Option<Bytes>, max_message: usize) -> Response<ResponseBody> {
    if message.as_ref().is_some_and(|m| m.len() > max_message) {  // the limit holds both ways, as in grpc's server
        let refusal = format!("the response is larger than the limit of {max_message} bytes");
        return grpc_response(RESOURCE_EXHAUSTED, &refusal, None, max_message);
    }
    let mut builder = Response::builder().header("content-type", "application/grpc");
    let mut status = HeaderMap::new();
    status.insert("grpc-status", HeaderValue::from(code));
    if !details.is_empty() {
        status.insert("grpc-message", percent_encode(details));
    }
    match message {
        Some(message) if code == OK => {
            let mut framed = BytesMut::with_capacity(5 + message.len());
            framed.put_u8(0);
            framed.put_u32(message.len() as u32);
            framed.extend_from_slice(&message);
            let body = Unary { data: Some(framed.freeze()), trailers: Some(status) };
            builder.body(body.boxed()).expect("valid response")
        }
        _ => {
            // Trailers-only: the status travels in the headers, with no body.
            for (name, value) in status.iter() {
                builder = builder.header(name, value);
            }
            let body = Unary { data: None, trailers: None };
            builder.body(body.boxed()).expect("valid response")
        }
    }
}

fn status(code: u32, details: &str) -> Response<ResponseBody> {
    grpc_response(code, details, None, usize::MAX)
}

/// The grpc-timeout header: up to 8 digits and a unit.
pub(crate) fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;  // u64's parser would also take a sign, which the header's grammar does not allow
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The one message of a unary request: a 5-byte prefix (compressed flag 0, big-endian length) and exactly that
/// many bytes; anything else (compressed, truncated, several messages) is None.
fn unframe(body: &Bytes) -> Option<Bytes> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    (length == body.len() - 5).then(|| body.slice(5..))
}

/// Runs the call in Python; any failure to do so is an INTERNAL status (the details go to stderr).
fn call_python(shared: &Shared, method: Method, message: Bytes, authorization: Option<String>,
               timeout_s: Option<f64>) -> (u32, String, Option<Bytes>) {
    Python::with_gil(|py| {
        let request = PyBytes::new(py, &message);
        let outcome = shared
            .dispatch
            .call1(py, (method.index, request, authorization, timeout_s))
            .and_then(|answer| {
                let (code, details, response): (u32, String, Option<Bound<'_, PyBytes>>) = answer.extract(py)?;
                Ok((code, details, response.map(|r| Bytes::copy_from_slice(r.as_bytes()))))
            });
        outcome.unwrap_or_else(|err| {
            err.print(py);
            (INTERNAL, INTERNAL_ERROR.to_owned(), None)
        })
    })
}

async fn unary(shared: Arc<Shared>, method: Method, req: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    let timeout = req.headers().get("grpc-timeout").and_then(parse_timeout);
    let authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let Ok(call) = shared.calls.clone().try_acquire_owned() else {
        return status(RESOURCE_EXHAUSTED, TOO_MANY);
    };
    let body = match Limited::new(req.into_body(), shared.max_message + 5).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return status(RESOURCE_EXHAUSTED,
                          &format!("the request is larger than the limit of {} bytes", shared.max_message));
        }
        Err(_) => return status(CANCELLED, "the request stream ended early"),
    };
    let Some(message) = unframe(&body) else {
        return status(INTERNAL, "a unary call needs exactly one uncompressed request message");
    };
    let deadline = timeout.map(|t| started + t);
    let remaining = move || deadline.map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64());
    if !method.waits_for(&message) {
        // A query runs right here, on the I/O thread that read it, as in a thread-per-core server: handing it to
        // another thread and back cost more CPU (thread switches) than its Python part (bench.serving). It
        // holds the thread for a search; the other I/O threads keep serving meanwhile.
        let (code, details, response) = call_python(&shared, method, message, authorization, remaining());
        drop(call);
        if remaining() == Some(0.0) {
            return status(DEADLINE_EXCEEDED, DEADLINE_PASSED);  // the caller has given up on the answer
        }
        return grpc_response(code, &details, response, shared.max_message);
    }
    // A call that may wait on Neo4j runs on one of a bounded set of threads of its own.
    let work = {
        let shared = shared.clone();
        async move {
            let thread = shared.waiting.clone().acquire_owned().await.expect("the semaphore is never closed");
            let remaining = remaining();
            if remaining == Some(0.0) {
                return (DEADLINE_EXCEEDED, DEADLINE_PASSED.to_owned(), None);
            }
            tokio::task::spawn_blocking(move || {
                let _held = (thread, call);
                call_python(&shared, method, message, authorization, remaining)
            })
            .await
            .unwrap_or_else(|_| (INTERNAL, INTERNAL_ERROR.to_owned(), None))
        }
    };
    let (code, details, response) = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(answer) => answer,
            Err(_) => (DEADLINE_EXCEEDED, DEADLINE_PASSED.to_owned(), None),
        },
        None => work.await,
    };
    grpc_response(code, &details, response, shared.max_message)
}

async fn forward(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ResponseBody> {
    // Streams count among the concurrent calls as long as they last, as in grpc's server.
    let Ok(call) = shared.calls.clone().try_acquire_owned() else {
        return status(RESOURCE_EXHAUSTED, TOO_MANY);
    };
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("http://{}{}", shared.backend_authority, path).parse() {
        Ok(uri) => uri,
        Err(_) => return status(INTERNAL, "the request path is not a valid URI"),
    };
    match shared.backend.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(|body| Held { inner: body.boxed(), _call: call }.boxed()),
        Err(_) => status(UNAVAILABLE, "the server's backend is not reachable; retry later"),
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
    let method = shared.methods.get(req.uri().path()).copied();
    // Compressed calls go to grpc's server, which decompresses; clients rarely compress small requests.
    let compressed = req.headers().get("grpc-encoding").is_some_and(|v| v != "identity");
    Ok(match method {
        Some(method) if !compressed => unary(shared, method, req).await,
        _ => forward(shared, req).await,
    })
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<Option<f64>>) {
    let graceful = GracefulShutdown::new();
    let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {  // out of file descriptors, say: back off rather than spin
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let service = service_fn(move |req| handle(shared.clone(), req));
                let conn = http2.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = stop.changed() => break stop.borrow().unwrap_or(0.0),
        }
    };
    drop(listener);
    // In-flight calls finish within the grace period; connections are told to go away (GOAWAY).
    let _ = tokio::time::timeout(Duration::from_secs_f64(grace), graceful.shutdown()).await;
}

/// The front end of one server process. Bound on creation (so its port is known), serving after `start`.
#[pyclass(module = "ig_front")]
struct Front {
    runtime: Option<tokio::runtime::Runtime>,
    listener: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    port: u16,
    stop: watch::Sender<Option<f64>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) fn bind(host: &str, port: u16, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, format!("{host} has no address")))?;
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[pymethods]
impl Front {
    /// `methods`: (full method name, may wait, field number of the request's bool that makes it wait or 0) for
    /// the unary methods answered through `dispatch`, which gets the method's position in that list. Everything
    /// else goes to `backend_port` on 127.0.0.1.
    #[new]
    #[pyo3(signature = (host, port, reuse_port, backend_port, dispatch, methods, wait_threads,
                        max_concurrent_rpcs, max_message_bytes, io_threads))]
    #[allow(clippy::too_many_arguments)]
    fn new(host: &str, port: u16, reuse_port: bool, backend_port: u16, dispatch: Py<PyAny>,
           methods: Vec<(String, bool, u32)>, wait_threads: usize, max_concurrent_rpcs: usize,
           max_message_bytes: usize, io_threads: usize) -> PyResult<Self> {
        if wait_threads == 0 || max_concurrent_rpcs == 0 || io_threads == 0 {
            return Err(PyValueError::new_err("wait_threads, max_concurrent_rpcs and io_threads must be at least 1"));
        }
        let listener = bind(host, port, reuse_port)
            .map_err(|err| PyOSError::new_err(format!("could not bind {host}:{port}: {err}")))?;
        let port = listener.local_addr().map_err(|err| PyOSError::new_err(err.to_string()))?.port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(io_threads)
            .thread_name("grpc-front")
            .enable_all()
            .build()
            .map_err(|err| PyRuntimeError::new_err(format!("could not start the front end's runtime: {err}")))?;
        let backend = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
        let methods = methods
            .into_iter()
            .enumerate()
            .map(|(index, (name, waits, waits_if))| (name, Method { index, waits, waits_if }))
            .collect();
        let shared = Arc::new(Shared {
            methods,
            dispatch,
            waiting: Arc::new(Semaphore::new(wait_threads)),
            calls: Arc::new(Semaphore::new(max_concurrent_rpcs)),
            max_message: max_message_bytes,
            backend,
            backend_authority: format!("127.0.0.1:{backend_port}"),
        });
        let (stop, _) = watch::channel(None);
        Ok(Front { runtime: Some(runtime), listener: Some(listener), shared, port, stop, serving: None })
    }

    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Starts answering calls.
    fn start(&mut self) -> PyResult<()> {
        let (Some(runtime), Some(listener)) = (self.runtime.as_ref(), self.listener.take()) else {
            return Err(PyRuntimeError::new_err("the front end was already started or stopped"));
        };
        let _entered = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|err| PyOSError::new_err(err.to_string()))?;
        self.serving = Some(runtime.spawn(accept_loop(listener, self.shared.clone(), self.stop.subscribe())));
        Ok(())
    }

    /// Stops accepting connections and lets calls in flight finish for up to `grace_s` seconds.
    #[allow(clippy::manual_clamp)] // clamp() keeps NaN, which Duration::from_secs_f64 would panic on
    fn stop(&mut self, py: Python<'_>, grace_s: f64) {
        let Some(runtime) = self.runtime.take() else { return };
        let serving = self.serving.take();
        let _ = self.stop.send(Some(grace_s.max(0.0).min(86_400.0)));  // max() also turns NaN into 0
        // Without the GIL: the calls in flight need it to finish.
        py.allow_threads(move || {
            if let Some(serving) = serving {
                let _ = runtime.block_on(serving);
            }
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
    }
}

#[pymodule]
fn ig_front(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Front>()?;
    m.add_class::<grpc::TonicFront>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &'static str) -> HeaderValue {
        HeaderValue::from_static(value)
    }

    #[test]
    fn percent_encode_passes_printable_ascii() {
        assert_eq!(percent_encode("no such item: 42 (try ~another)"), "no such item: 42 (try ~another)");
    }

    #[test]
    fn percent_encode_escapes_percent_controls_and_utf8() {
        assert_eq!(percent_encode("100%"), "100%25");
        assert_eq!(percent_encode("a\nb\tc"), "a%0Ab%09c");
        assert_eq!(percent_encode("café"), "caf%C3%A9");
        assert_eq!(percent_encode("\u{7f}"), "%7F");
    }

    #[test]
    fn parse_timeout_reads_every_unit() {
        assert_eq!(parse_timeout(&header("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout(&header("3M")), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout(&header("5S")), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout(&header("250m")), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(&header("750u")), Some(Duration::from_micros(750)));
        assert_eq!(parse_timeout(&header("99999999n")), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse_timeout(&header("0m")), Some(Duration::ZERO));
    }

    #[test]
    fn parse_timeout_takes_at_most_eight_digits() {
        assert_eq!(parse_timeout(&header("99999999H")), Some(Duration::from_secs(99_999_999 * 3600)));
        assert_eq!(parse_timeout(&header("123456789S")), None);
    }

    #[test]
    fn parse_timeout_rejects_malformed_values() {
        for bad in ["", "S", "5", "5s", "5x", "1.5S", "-1S", "+1S", " 1S", "S5", "mm"] {
            assert_eq!(parse_timeout(&HeaderValue::from_str(bad).unwrap()), None, "{bad:?}");
        }
        assert_eq!(parse_timeout(&HeaderValue::from_bytes(b"1\xffS").unwrap()), None);
    }

    #[test]
    fn flag_set_reads_the_top_level_varint_field() {
        // SimilarItemsRequest-like: 1 = "item" (string), 2 = k (varint), 5 = explain (bool), 3 = a nested message
        let base: &[u8] = &[0x0a, 0x04, b'i', b't', b'e', b'm', 0x10, 0x0a, 0x1a, 0x02, 0x28, 0x01];
        assert!(!flag_set(base, 5), "a varint inside a nested message is not the top-level field");
        assert!(flag_set(&[base, &[0x28, 0x01]].concat(), 5));
        assert!(!flag_set(&[base, &[0x28, 0x01, 0x28, 0x00]].concat(), 5), "the last occurrence wins");
        assert!(flag_set(&[base, &[0x28, 0x80, 0x01]].concat(), 5), "a multi-byte varint");
        assert!(!flag_set(&[], 5));
        assert!(!flag_set(&[0x09, 1, 2, 3, 4, 5, 6, 7, 8, 0x15, 1, 2, 3, 4], 5), "fixed64 and fixed32 are skipped");
    }

    #[test]
    fn flag_set_counts_an_unreadable_message_as_set() {
        assert!(flag_set(&[0x0a, 0x09, b'x'], 5), "a length past the end");
        assert!(flag_set(&[0x28], 5), "a key without its value");
        assert!(flag_set(&[0x0b], 5), "a group");
        assert!(flag_set(&[0xff; 11], 5), "a varint longer than 10 bytes");
    }

    #[test]
    fn only_a_method_with_the_flag_waits_for_it() {
        let plain = Method { index: 0, waits: false, waits_if: 0 };
        let explainable = Method { index: 0, waits: false, waits_if: 5 };
        let waiting = Method { index: 0, waits: true, waits_if: 0 };
        assert!(!plain.waits_for(&[0x28, 0x01]));
        assert!(explainable.waits_for(&[0x28, 0x01]) && !explainable.waits_for(&[0x10, 0x0a]));
        assert!(waiting.waits_for(&[]));
    }

    fn framed(flag: u8, length: u32, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(flag);
        out.put_u32(length);
        out.extend_from_slice(payload);
        out.freeze()
    }

    #[test]
    fn unframe_returns_the_one_message() {
        assert_eq!(unframe(&framed(0, 3, b"abc")), Some(Bytes::from_static(b"abc")));
        assert_eq!(unframe(&framed(0, 0, b"")), Some(Bytes::new()));
    }

    #[test]
    fn unframe_rejects_compressed_truncated_and_repeated_messages() {
        assert_eq!(unframe(&framed(1, 3, b"abc")), None, "compressed");
        assert_eq!(unframe(&Bytes::from_static(&[0, 0, 0, 0])), None, "prefix cut short");
        assert_eq!(unframe(&Bytes::new()), None, "empty body");
        assert_eq!(unframe(&framed(0, 4, b"abc")), None, "message cut short");
        assert_eq!(unframe(&framed(0, 2, b"abc")), None, "bytes after the message");
        let mut two = BytesMut::from(&framed(0, 1, b"a")[..]);
        two.extend_from_slice(&framed(0, 1, b"b"));
        assert_eq!(unframe(&two.freeze()), None, "two messages");
    }

    /// The answer's headers, body bytes and trailers.
    async fn parts(response: Response<ResponseBody>) -> (HeaderMap, Bytes, Option<HeaderMap>) {
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("the body is in memory");
        let trailers = collected.trailers().cloned();
        (parts.headers, collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn a_successful_answer_is_one_framed_message_then_the_status_trailers() {
        let (headers, body, trailers) = parts(grpc_response(OK, "", Some(Bytes::from_static(b"hello")), 64)).await;
        assert_eq!(headers["content-type"], "application/grpc");
        assert!(headers.get("grpc-status").is_none());
        assert_eq!(&body[..], &[0, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert!(trailers.get("grpc-message").is_none());
    }

    #[tokio::test]
    async fn an_error_is_trailers_only_with_its_encoded_message() {
        let (headers, body, trailers) = parts(status(UNAVAILABLE, "retry in 5% of a minute")).await;
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers["grpc-message"], "retry in 5%25 of a minute");
        assert!(body.is_empty());
        assert!(trailers.is_none());
    }

    #[tokio::test]
    async fn an_error_drops_any_response_message() {
        let (headers, body, _) = parts(grpc_response(INTERNAL, "boom", Some(Bytes::from_static(b"x")), 64)).await;
        assert_eq!(headers["grpc-status"], "13");
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn a_response_over_the_limit_is_refused() {
        let (headers, body, _) = parts(grpc_response(OK, "", Some(Bytes::from_static(b"12345")), 4)).await;
        assert_eq!(headers["grpc-status"], "8");
        assert_eq!(headers["grpc-message"], "the response is larger than the limit of 4 bytes");
        assert!(body.is_empty());
    }
}
