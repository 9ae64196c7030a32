//! The front end on tonic (`TonicFront`, IG_SERVER_FRONT=native or auto): tonic's server-side gRPC (message
//! framing, status and grpc-message encoding, trailers-only errors, gzip) with a pass-through codec, so Python
//! still gets the serialized request and returns bytes through one `dispatch(method, request_bytes, metadata,
//! timeout_s) -> (status_code, details, response_bytes)`. HTTP/2 is hyper's, with the limits set from the
//! settings; TLS is rustls's (src/tls.rs). Queries run on the I/O thread that read them (at most io_threads at
//! once), calls that may wait on a bounded pool, everything else is forwarded to grpc's Python server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, UnaryService};
use tonic::{Code, Status};

use crate::metadata::{refusal, request_metadata, Value};
use crate::tls::{acceptor, Certificate};
use crate::{bind, parse_timeout, Method, DEADLINE_PASSED, INTERNAL_ERROR, TOO_MANY};

/// Messages pass through as bytes: Python parses and serializes them.
#[derive(Clone, Copy, Default)]
pub(crate) struct BytesCodec;

pub(crate) struct PassThrough;

/// The codec's buffers start at 1 KiB rather than tonic's 8 KiB: this API's messages are mostly a few hundred
/// bytes, and an allocation that small is one of malloc's cached sizes (perf showed malloc/free/memset of the
/// 8 KiB buffers on every call). A larger message grows its buffer; 32 KiB is tonic's yield threshold.
const BUFFERS: (usize, usize) = (1024, 32 * 1024);

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(BUFFERS.0, BUFFERS.1)
    }
}

impl Decoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(BUFFERS.0, BUFFERS.1)
    }
}

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = PassThrough;
    type Decoder = PassThrough;

    fn encoder(&mut self) -> PassThrough {
        PassThrough
    }

    fn decoder(&mut self) -> PassThrough {
        PassThrough
    }
}

/// HTTP/2 limits per connection (IG_SERVER_H2_*, docs/api.md).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Http2Limits {
    pub(crate) max_concurrent_streams: u32,
    pub(crate) max_header_list_bytes: u32,
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) max_pending_accept_reset_streams: usize,
    pub(crate) max_local_error_reset_streams: usize,
}

impl Http2Limits {
    fn builder(&self) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_bytes)
            .keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            // Rapid reset (CVE-2023-44487) and its kin: a connection whose client resets streams it opened, or
            // makes the server reset them, faster than these allow is closed with GOAWAY.
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_reset_streams);
        http2
    }
}

struct Shared {
    methods: HashMap<String, Method>,
    dispatch: Py<PyAny>,
    /// Threads for the calls that may wait (on Neo4j): they never hold up the I/O threads, which run queries.
    waiting: Arc<Semaphore>,
    /// Places for queries running Python on an I/O thread: io_threads of them, and the runtime has one thread
    /// more, so however long the queries in Python are held up, a thread is left to serve I/O.
    python: Arc<Semaphore>,
    /// Calls in flight, answered here or forwarded (IG_SERVER_MAX_CONCURRENT_RPCS).
    calls: Arc<Semaphore>,
    max_calls: usize,
    max_message: usize,
    backend: Client<HttpConnector, Incoming>,
    backend_authority: String,
    /// grpc.health.v1 statuses by service name, set from Python (`set_health`): Check is answered here, without
    /// Python, so no model switch or GIL holder can make a health check miss its deadline.
    health: RwLock<HashMap<String, i32>>,
    /// Health checks answered here, by status code (the server's metrics read them at scrape time).
    health_checks: [AtomicU64; 17],
}

/// Python's answer: status code, details, and on success the response message already framed (the 5-byte
/// prefix, then the message), as it goes on the wire.
type Answer = (u32, String, Option<Bytes>);

/// The 5-byte gRPC prefix (uncompressed) and the message: the one copy of Python's bytes.
fn framed(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.extend_from_slice(message);
    out.freeze()
}

/// Runs the call in Python; any failure to do so is an INTERNAL status (the details go to stderr). The request's
/// metadata becomes Python strings straight from its headers.
fn call_python(shared: &Shared, method: Method, message: Bytes, headers: &HeaderMap, timeout_s: Option<f64>) -> Answer {
    Python::with_gil(|py| {
        let outcome = request_metadata(headers)
            .map(|(key, value)| {
                let value = match value {
                    Value::Text(text) => PyString::new(py, text).into_any(),
                    Value::Binary(bytes) => PyBytes::new(py, &bytes).into_any(),
                };
                PyTuple::new(py, [PyString::new(py, key).into_any(), value])
            })
            .collect::<PyResult<Vec<_>>>()
            .and_then(|pairs| PyTuple::new(py, pairs))
            .and_then(|metadata| {
                let request = PyBytes::new(py, &message);
                shared.dispatch.call1(py, (method.index, request, metadata, timeout_s))
            })
            .and_then(|answer| {
                let (code, details, response): (u32, String, Option<Bound<'_, PyBytes>>) = answer.extract(py)?;
                Ok((code, details, response.map(|r| framed(r.as_bytes()))))
            });
        outcome.unwrap_or_else(|err| {
            err.print(py);
            (Code::Internal as u32, INTERNAL_ERROR.to_owned(), None)
        })
    })
}

/// Python's answer as the framed message or the status; an answer over the message limit is refused, as grpc's
/// server does.
fn into_result(answer: Answer, max_message: usize) -> Result<Bytes, Status> {
    match answer {
        (0, _, Some(framed)) if framed.len() - 5 > max_message => {
            Err(Status::resource_exhausted(format!("the response is larger than the limit of {max_message} bytes")))
        }
        (0, _, Some(framed)) => Ok(framed),
        (0, _, None) => Err(Status::internal(INTERNAL_ERROR)),
        (code, details, _) => Err(Status::new(Code::from(code as i32), details)),
    }
}

fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// A place to run a query's Python on this I/O thread, waited for (without holding the thread) up to the call's
/// deadline; None once the deadline has passed.
async fn python_slot(shared: &Shared, deadline: Option<Instant>) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = shared.python.clone().try_acquire_owned() {
        return Some(slot);  // the usual case: no timer to set
    }
    let wait = shared.python.clone().acquire_owned();
    let slot = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), wait).await.ok()?,
        None => wait.await,
    };
    Some(slot.expect("the semaphore is never closed"))
}

/// Pending once, waking itself at once. Its own wake pushes whatever sat in this thread's "run next" slot into the
/// run queue, where other threads may take it. Not `tokio::task::yield_now`, whose wake is deferred until the
/// thread is about to park: with it, a cargo test run once hung for good with every thread parked and a call never
/// resumed (the cause was not pinned down); a plain self-wake leaves nothing on a deferred list.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Runs a call of a method answered here, which holds its place among the concurrent calls (`permit`) until
/// answered: the framed response message, or the status.
async fn run(shared: Arc<Shared>, method: Method, deadline: Option<Instant>, permit: OwnedSemaphorePermit, headers: HeaderMap,
             message: Bytes) -> Result<Bytes, Status> {
    if expired(deadline) {  // spent in transit or while the request was read: not worth running
        return Err(Status::deadline_exceeded(DEADLINE_PASSED));
    }
    let remaining = move || deadline.map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64());
    let max_message = shared.max_message;
    if !method.waits_for(&message) {
        // A query runs right here, on the I/O thread that read it: handing it to another thread and back cost more
        // CPU (thread switches) than its Python part (bench.serving); so did block_in_place, which handed the
        // thread's other work to a fresh thread on every call (~25 % of a SimilarItems call, bench.fronts). At most
        // io_threads queries run so, and the runtime has a thread more: a query held up (by the engine lock,
        // during a model switch) stalls no other call, health checks and forwarded calls go on, and the queries
        // behind it wait for a place without holding a thread.
        let Some(slot) = python_slot(&shared, deadline).await else {
            return Err(Status::deadline_exceeded(DEADLINE_PASSED));  // it waited past its deadline: not run
        };
        // Once more through the scheduler first: a task this one woke (its connection's, typically) sits in this
        // thread's "run next" slot, which no other thread may take, and would wait as long as the Python call is
        // held up, stalling that connection's other calls. Resumed, this task starts with the slot empty, and
        // wakes nothing more before Python.
        YieldOnce(false).await;
        let answer = call_python(&shared, method, message, &headers, remaining());
        drop(slot);
        drop(permit);
        if expired(deadline) {
            return Err(Status::deadline_exceeded(DEADLINE_PASSED));  // the caller has given up on it
        }
        return into_result(answer, max_message);
    }
    // A call that may wait on Neo4j runs on one of a bounded set of threads of its own. Its deadline holds while it
    // queues: one that passes before a thread is free is answered DEADLINE_EXCEEDED, not run.
    let work = {
        let shared = shared.clone();
        async move {
            let thread = shared.waiting.clone().acquire_owned().await.expect("the semaphore is never closed");
            if expired(deadline) {
                return (Code::DeadlineExceeded as u32, DEADLINE_PASSED.to_owned(), None);
            }
            let remaining = remaining();
            tokio::task::spawn_blocking(move || {
                let _held = (thread, permit);
                call_python(&shared, method, message, &headers, remaining)
            })
            .await
            .unwrap_or_else(|_| (Code::Internal as u32, INTERNAL_ERROR.to_owned(), None))
        }
    };
    let answer = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(answer) => answer,
            Err(_) => (Code::DeadlineExceeded as u32, DEADLINE_PASSED.to_owned(), None),
        },
        None => work.await,
    };
    into_result(answer, max_message)
}

/// A call through tonic's unary handling (a compressed request), holding its place among the concurrent calls.
struct Call {
    shared: Arc<Shared>,
    method: Method,
    deadline: Option<Instant>,
    permit: Option<OwnedSemaphorePermit>,
    headers: HeaderMap,
}

impl UnaryService<Bytes> for Call {
    type Response = Bytes;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<Bytes>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let (shared, method, deadline) = (self.shared.clone(), self.method, self.deadline);
        let permit = self.permit.take().expect("a Call is called once");
        let headers = std::mem::take(&mut self.headers);
        let message = request.into_inner();
        Box::pin(async move {
            let framed = run(shared, method, deadline, permit, headers, message).await?;
            Ok(tonic::Response::new(framed.slice(5..)))
        })
    }
}

/// What a request is answered with: a unary call's message and its status trailers, built here, or a body of
/// tonic's (statuses, the compressed path, health checks) or of grpc's server (forwarded calls).
pub(crate) enum Reply {
    Message { data: Option<Bytes>, trailers: Option<HeaderMap> },
    Tonic(Body),
}

impl Reply {
    /// The successful answer of a unary call, as tonic's encoder writes it: the framed message, then
    /// `grpc-status: 0` in the trailers.
    fn message(framed: Bytes) -> Response<Reply> {
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert(Status::GRPC_STATUS, HeaderValue::from_static("0"));
        let mut response = Response::new(Reply::Message { data: Some(framed), trailers: Some(trailers) });
        *response.version_mut() = http::Version::HTTP_2;
        response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        response
    }
}

impl HttpBody for Reply {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.get_mut() {
            Reply::Message { data, trailers } => match data.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            Reply::Tonic(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Reply::Message { data, trailers } => data.is_none() && trailers.is_none(),
            Reply::Tonic(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Reply::Message { data, .. } => http_body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Reply::Tonic(body) => body.size_hint(),
        }
    }
}

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// grpc.health.v1.Health/Check answered from the status table; Watch (a stream) is still forwarded.
struct HealthCall {
    shared: Arc<Shared>,
    _call: OwnedSemaphorePermit,
}

impl UnaryService<Bytes> for HealthCall {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let answer = health_answer(&self.shared, &request.into_inner());
        let code = answer.as_ref().map_or_else(|status| status.code() as usize, |_| 0);
        self.shared.health_checks[code.min(16)].fetch_add(1, Ordering::Relaxed);
        std::future::ready(answer)
    }
}

fn health_answer(shared: &Shared, request: &[u8]) -> Result<tonic::Response<Bytes>, Status> {
    let Some(service) = health_service(request) else {
        return Err(Status::invalid_argument("the request is not a grpc.health.v1.HealthCheckRequest"));
    };
    // As grpc's health servicer: a service never set is NOT_FOUND.
    let status = shared.health.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(service).copied();
    match status {
        Some(status) => Ok(tonic::Response::new(health_response(status))),
        None => Err(Status::not_found("unknown service")),
    }
}

/// The `service` (field 1) of a serialized HealthCheckRequest, unknown fields skipped; None if malformed.
fn health_service(mut message: &[u8]) -> Option<&str> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first()?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut service = "";
    while !message.is_empty() {
        let key = varint(&mut message)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut message)?;
                0
            }
            1 => 8,
            2 => {
                let len = usize::try_from(varint(&mut message)?).ok()?;
                if key >> 3 == 1 {
                    service = std::str::from_utf8(message.get(..len)?).ok()?;
                }
                len
            }
            5 => 4,
            _ => return None,
        };
        message = message.get(skip..)?;
    }
    Some(service)
}

/// A serialized HealthCheckResponse: `status` (field 1, an enum) unless it is 0, which proto3 leaves out.
fn health_response(status: i32) -> Bytes {
    let mut out = Vec::with_capacity(11);
    if status != 0 {
        out.push(0x08);
        let mut value = status as i64 as u64;  // a negative enum is ten bytes, as protobuf writes it
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    Bytes::from(out)
}

async fn health_check(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let Ok(call) = shared.calls.clone().try_acquire_owned() else {
        return status(Status::resource_exhausted(TOO_MANY));
    };
    let mut grpc = Grpc::new(BytesCodec)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(shared.max_message)
        .max_encoding_message_size(usize::MAX);
    grpc.unary(HealthCall { shared: shared.clone(), _call: call }, req).await
}

/// A forwarded call's answer, holding its place among the concurrent calls until it is sent.
struct Held {
    inner: Incoming,
    _call: OwnedSemaphorePermit,
}

impl HttpBody for Held {
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

const ONE_MESSAGE: &str = "a unary call takes exactly one request message";

/// Whether a unary request's body holds bytes after its first message (a message cut short, or none, is tonic's
/// to refuse).
fn more_than_one_message(body: &[u8]) -> bool {
    body.len() >= 5 && (u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize) < body.len() - 5
}

fn status(status: Status) -> Response<Body> {
    status.into_http()
}

/// The one message of a uncompressed unary request body, as a slice of it: the 5-byte prefix (flag 0, length)
/// and exactly that many bytes; None for anything else (compressed, cut short, several messages), which tonic's
/// decoder reads or refuses.
fn unframe(body: &Bytes) -> Option<Bytes> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    (length == body.len() - 5).then(|| body.slice(5..))
}

fn tonic_reply(response: Response<Body>) -> Response<Reply> {
    response.map(Reply::Tonic)
}

async fn unary(shared: Arc<Shared>, method: Method, req: Request<Incoming>) -> Response<Reply> {
    let deadline = req.headers().get("grpc-timeout").and_then(parse_timeout).map(|t| Instant::now() + t);
    let Ok(permit) = shared.calls.clone().try_acquire_owned() else {
        return tonic_reply(status(Status::resource_exhausted(TOO_MANY)));
    };
    let (parts, body) = req.into_parts();
    // Read whole, with the limit, so an oversized request is RESOURCE_EXHAUSTED as from grpc's server.
    let body = match Limited::new(body, shared.max_message + 5).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return tonic_reply(status(Status::resource_exhausted(format!(
                "the request is larger than the limit of {} bytes",
                shared.max_message
            ))));
        }
        Err(_) => return tonic_reply(status(Status::cancelled("the request stream ended early"))),
    };
    if more_than_one_message(&body) {  // tonic would answer the first and drop the rest
        return tonic_reply(status(Status::internal(ONE_MESSAGE)));
    }
    let uncompressed = parts.headers.get("grpc-encoding").is_none_or(|v| v == "identity");
    if let Some(message) = unframe(&body).filter(|_| uncompressed) {
        // The usual call: its message is a slice of the body read, its answer one frame and the status trailers
        // as tonic's encoder writes them. tonic's unary path, built on its streaming decoder and encoder, cost
        // more allocations and copies per call than framing it here (perf, bench.fronts; docs/benchmarks.md).
        return match run(shared, method, deadline, permit, parts.headers, message).await {
            Ok(framed) => Reply::message(framed),
            Err(refused) => tonic_reply(status(refused)),
        };
    }
    let mut grpc = Grpc::new(BytesCodec)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(shared.max_message)
        .max_encoding_message_size(usize::MAX);  // into_result applies the limit, with grpc's status
    let call = Call { shared: shared.clone(), method, deadline, permit: Some(permit), headers: parts.headers.clone() };
    tonic_reply(grpc.unary(call, Request::from_parts(parts, Full::new(body))).await)
}

async fn forward(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    // Streams count among the concurrent calls as long as they last, as in grpc's server.
    let Ok(call) = shared.calls.clone().try_acquire_owned() else {
        return status(Status::resource_exhausted(TOO_MANY));
    };
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("http://{}{}", shared.backend_authority, path).parse() {
        Ok(uri) => uri,
        Err(_) => return status(Status::internal("the request path is not a valid URI")),
    };
    match shared.backend.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(|body| Body::new(Held { inner: body, _call: call })),
        Err(_) => status(Status::unavailable("the server's backend is not reachable; retry later")),
    }
}

/// What a request that is not a gRPC call gets, and how much of its body is read before it is answered.
const NOT_GRPC: &[u8] = b"this port serves gRPC: POST with content-type application/grpc\n";
const REFUSED_BODY: usize = 64 * 1024;

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Reply>, Infallible> {
    if let Some(code) = refusal(req.method(), req.headers()) {
        // The request is read to its end first (up to a bound), as for any call: answering while the client still
        // sends would reset its stream under it, and a protocol error it then makes would go unanswered (h2spec).
        let _ = Limited::new(req.into_body(), REFUSED_BODY).collect().await;
        let mut answer = Response::new(Body::new(Full::new(Bytes::from_static(NOT_GRPC))));
        *answer.status_mut() = code;
        answer.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
        if code == http::StatusCode::METHOD_NOT_ALLOWED {
            answer.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        }
        return Ok(tonic_reply(answer));
    }
    let method = shared.methods.get(req.uri().path()).copied();
    // gzip is read here; another encoding goes to grpc's server, which knows more of them.
    let foreign = req.headers().get("grpc-encoding").is_some_and(|v| v != "identity" && v != "gzip");
    Ok(match method {
        Some(method) if !foreign => unary(shared, method, req).await,
        None if !foreign && req.uri().path() == HEALTH_CHECK => tonic_reply(health_check(shared, req).await),
        _ => tonic_reply(forward(shared, req).await),
    })
}

/// Serves one connection (TCP or TLS) until it closes or the front end stops.
async fn serve<I>(io: I, shared: Arc<Shared>, http2: hyper::server::conn::http2::Builder<TokioExecutor>, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(shared.clone(), req));
    let _ = watcher.watch(http2.serve_connection(TokioIo::new(io), service)).await;
}

/// How long a client has to complete its TLS handshake before the connection is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>, http2: hyper::server::conn::http2::Builder<TokioExecutor>,
                     tls: Option<Arc<Certificate>>, mut stop: watch::Receiver<Option<f64>>) {
    let graceful = GracefulShutdown::new();
    let tls = tls.and_then(|certificate| acceptor(certificate).ok());
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
                let (shared, http2, watcher) = (shared.clone(), http2.clone(), graceful.watcher());
                match &tls {
                    None => {
                        tokio::spawn(serve(stream, shared, http2, watcher));
                    }
                    Some(tls) => {
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            // The handshake runs in the connection's task, so a slow client holds up no other.
                            if let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE, tls.accept(stream)).await {
                                serve(stream, shared, http2, watcher).await;
                            }
                        });
                    }
                }
            }
            _ = stop.changed() => break stop.borrow().unwrap_or(0.0),
        }
    };
    drop(listener);
    // In-flight calls finish within the grace period; connections are told to go away (GOAWAY).
    let _ = tokio::time::timeout(Duration::from_secs_f64(grace), graceful.shutdown()).await;
}

/// The front end of one server process on tonic. Bound on creation (so its port is known), serving after `start`.
#[pyclass(module = "ig_front")]
pub(crate) struct TonicFront {
    runtime: Option<tokio::runtime::Runtime>,
    listener: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    limits: Http2Limits,
    certificate: Option<Arc<Certificate>>,
    port: u16,
    stop: watch::Sender<Option<f64>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

#[pymethods]
impl TonicFront {
    /// `methods`: (full method name, may wait, field number of the request's bool that makes it wait or 0) for
    /// the unary methods answered through `dispatch`, which gets the method's position in that list. Everything
    /// else goes to `backend_port` on 127.0.0.1. `tls`: (certificate chain PEM, private key PEM), or plaintext.
    #[new]
    #[pyo3(signature = (host, port, reuse_port, backend_port, dispatch, methods, wait_threads, max_concurrent_rpcs,
                        max_message_bytes, io_threads, tls=None, max_concurrent_streams=256, max_header_list_bytes=16384,
                        keepalive_interval_s=60.0, keepalive_timeout_s=20.0, max_pending_accept_reset_streams=20,
                        max_local_error_reset_streams=1024))]
    #[allow(clippy::too_many_arguments)]
    fn new(host: &str, port: u16, reuse_port: bool, backend_port: u16, dispatch: Py<PyAny>, methods: Vec<(String, bool, u32)>,
           wait_threads: usize, max_concurrent_rpcs: usize, max_message_bytes: usize, io_threads: usize,
           tls: Option<(Vec<u8>, Vec<u8>)>, max_concurrent_streams: u32, max_header_list_bytes: u32, keepalive_interval_s: f64,
           keepalive_timeout_s: f64, max_pending_accept_reset_streams: usize, max_local_error_reset_streams: usize)
           -> PyResult<Self> {
        if wait_threads == 0 || max_concurrent_rpcs == 0 || io_threads == 0 || max_concurrent_streams == 0 {
            return Err(PyValueError::new_err(
                "wait_threads, max_concurrent_rpcs, io_threads and max_concurrent_streams must be at least 1",
            ));
        }
        let seconds = |s: f64, what: &str| {
            Duration::try_from_secs_f64(s).map_err(|_| PyValueError::new_err(format!("{what} must be a duration in seconds, not {s}")))
        };
        let keepalive_interval = seconds(keepalive_interval_s, "keepalive_interval_s")?;
        let limits = Http2Limits {
            max_concurrent_streams,
            max_header_list_bytes,
            keepalive_interval: (!keepalive_interval.is_zero()).then_some(keepalive_interval),
            keepalive_timeout: seconds(keepalive_timeout_s, "keepalive_timeout_s")?,
            max_pending_accept_reset_streams,
            max_local_error_reset_streams,
        };
        let certificate = match tls {
            Some((cert, key)) => Some(Arc::new(Certificate::new(&cert, &key).map_err(PyValueError::new_err)?)),
            None => None,
        };
        if let Some(certificate) = &certificate {
            acceptor(certificate.clone()).map_err(PyValueError::new_err)?;
        }
        let listener = bind(host, port, reuse_port).map_err(|err| PyOSError::new_err(format!("could not bind {host}:{port}: {err}")))?;
        let port = listener.local_addr().map_err(|err| PyOSError::new_err(err.to_string()))?.port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(io_threads + 1)  // the one more: see Shared::python
            .thread_name("grpc-front")
            .enable_all()
            .build()
            .map_err(|err| PyRuntimeError::new_err(format!("could not start the front end's runtime: {err}")))?;
        // Without TCP_NODELAY a forwarded call's small frames wait out Nagle against the backend's delayed ACK:
        // ~40 ms a health check took when it was forwarded (bench.switch_stall).
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let backend = Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
        let methods = methods
            .into_iter()
            .enumerate()
            .map(|(index, (name, waits, waits_if))| (name, Method { index, waits, waits_if }))
            .collect();
        let shared = Arc::new(Shared {
            methods,
            dispatch,
            waiting: Arc::new(Semaphore::new(wait_threads)),
            python: Arc::new(Semaphore::new(io_threads)),
            calls: Arc::new(Semaphore::new(max_concurrent_rpcs)),
            max_calls: max_concurrent_rpcs,
            max_message: max_message_bytes,
            backend,
            backend_authority: format!("127.0.0.1:{backend_port}"),
            health: RwLock::new(HashMap::new()),
            health_checks: Default::default(),
        });
        let (stop, _) = watch::channel(None);
        Ok(TonicFront { runtime: Some(runtime), listener: Some(listener), shared, limits, certificate, port, stop, serving: None })
    }

    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Calls in flight: answered here (queued or running) or forwarded and not yet answered.
    #[getter]
    fn in_flight(&self) -> usize {
        self.shared.max_calls - self.shared.calls.available_permits()
    }

    #[getter]
    fn tls(&self) -> bool {
        self.certificate.is_some()
    }

    /// Sets a service's grpc.health.v1 status (HealthCheckResponse.ServingStatus), which health checks get from
    /// here on; "" is the whole server.
    fn set_health(&self, service: String, status: i32) {
        self.shared.health.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(service, status);
    }

    /// Health checks answered here so far: (gRPC status code, count) for each code answered at least once.
    #[getter]
    fn health_checks(&self) -> Vec<(u32, u64)> {
        (0..17u32).map(|code| (code, self.shared.health_checks[code as usize].load(Ordering::Relaxed))).filter(|&(_, n)| n > 0).collect()
    }

    /// Starts answering calls.
    fn start(&mut self) -> PyResult<()> {
        let (Some(runtime), Some(listener)) = (self.runtime.as_ref(), self.listener.take()) else {
            return Err(PyRuntimeError::new_err("the front end was already started or stopped"));
        };
        let _entered = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|err| PyOSError::new_err(err.to_string()))?;
        let serving = accept_loop(listener, self.shared.clone(), self.limits.builder(), self.certificate.clone(), self.stop.subscribe());
        self.serving = Some(runtime.spawn(serving));
        Ok(())
    }

    /// Presents a new certificate chain and key (PEM) from the next handshake on; on an error (ValueError, with
    /// what was wrong) the current one stays.
    fn reload_tls(&self, cert_pem: &[u8], key_pem: &[u8]) -> PyResult<()> {
        let Some(certificate) = &self.certificate else {
            return Err(PyRuntimeError::new_err("this front end serves plaintext: there is no certificate to reload"));
        };
        certificate.reload(cert_pem, key_pem).map_err(PyValueError::new_err)
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn parts(response: Response<Body>) -> (http::HeaderMap, Bytes, Option<http::HeaderMap>) {
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("the body is in memory");
        let trailers = collected.trailers().cloned();
        (parts.headers, collected.to_bytes(), trailers)
    }

    fn grpc_request(body: Bytes, encoding: Option<&'static str>) -> Request<Full<Bytes>> {
        let mut builder = Request::post("/interest.v1.InterestService/Echo").header("content-type", "application/grpc");
        if let Some(encoding) = encoding {
            builder = builder.header("grpc-encoding", encoding);
        }
        builder.body(Full::new(body)).unwrap()
    }

    /// The pass-through codec under tonic's framing: an echo of the request's bytes.
    async fn echo(body: Bytes, encoding: Option<&'static str>, max: usize) -> (http::HeaderMap, Bytes, Option<http::HeaderMap>) {
        #[derive(Clone)]
        struct Echo;
        impl UnaryService<Bytes> for Echo {
            type Response = Bytes;
            type Future = std::future::Ready<Result<tonic::Response<Bytes>, Status>>;
            fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
                std::future::ready(Ok(tonic::Response::new(request.into_inner())))
            }
        }
        let mut grpc = Grpc::new(BytesCodec).accept_compressed(CompressionEncoding::Gzip).max_decoding_message_size(max);
        parts(grpc.unary(Echo, grpc_request(body, encoding)).await).await
    }

    fn framed(flag: u8, payload: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(flag);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        Bytes::from(out)
    }

    #[tokio::test]
    async fn the_codec_passes_the_message_bytes_through_both_ways() {
        let (headers, body, trailers) = echo(framed(0, b"\x0a\x03abc"), None, 64).await;
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(body, framed(0, b"\x0a\x03abc"));
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
        let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();  // past the codec's first buffer both ways
        let (_, body, _) = echo(framed(0, &big), None, 8192).await;
        assert_eq!(body, framed(0, &big));
    }

    #[tokio::test]
    async fn a_gzip_request_reaches_the_handler_decompressed() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"hello hello hello").unwrap();
        let (_, body, _) = echo(framed(1, &gz.finish().unwrap()), Some("gzip"), 64).await;
        assert_eq!(body, framed(0, b"hello hello hello"));
    }

    #[tokio::test]
    async fn a_truncated_or_oversized_message_is_an_error_not_a_call() {
        let mut cut = framed(0, b"abcdef").to_vec();
        cut.truncate(8);
        let (headers, body, _) = echo(Bytes::from(cut), None, 64).await;
        assert_ne!(headers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert!(body.is_empty());
        let (headers, _, _) = echo(framed(0, &[7; 65]), None, 64).await;
        assert_eq!(headers["grpc-status"], (Code::OutOfRange as i32).to_string().as_str());
    }

    #[test]
    fn only_a_body_with_bytes_after_its_first_message_has_more_than_one() {
        assert!(!more_than_one_message(&framed(0, b"abc")));
        assert!(!more_than_one_message(&framed(1, b"")));
        assert!(more_than_one_message(&[framed(0, b"a"), framed(0, b"b")].concat()));
        assert!(more_than_one_message(&[&framed(0, b"a")[..], &[0]].concat()), "a stray byte after the message");
        assert!(!more_than_one_message(&framed(0, b"abcdef")[..8]), "cut short: tonic's to refuse");
        assert!(!more_than_one_message(&[0, 0, 0]), "no whole prefix");
    }

    #[test]
    fn python_answers_map_to_grpc_statuses() {
        let ok = into_result((0, String::new(), Some(super::framed(b"1234"))), 4).unwrap();
        assert_eq!(ok, framed(0, b"1234"));
        let big = into_result((0, String::new(), Some(super::framed(b"12345"))), 4).unwrap_err();
        assert_eq!((big.code(), big.message()), (Code::ResourceExhausted, "the response is larger than the limit of 4 bytes"));
        let missing = into_result((5, "no such item: x".into(), None), 4).unwrap_err();
        assert_eq!((missing.code(), missing.message()), (Code::NotFound, "no such item: x"));
        assert_eq!(into_result((0, String::new(), None), 4).unwrap_err().code(), Code::Internal);
    }

    #[tokio::test]
    async fn an_error_is_trailers_only_with_its_encoded_message() {
        let (headers, body, trailers) = parts(status(Status::unavailable("retry in 5% of a minute: größe"))).await;
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers["grpc-message"], "retry%20in%205%25%20of%20a%20minute:%20gr%C3%B6%C3%9Fe");
        assert!(body.is_empty() && trailers.is_none());
    }

    fn py_eval(source: &str) -> Py<PyAny> {
        pyo3::prepare_freethreaded_python();
        Python::with_gil(|py| py.eval(&std::ffi::CString::new(source).unwrap(), None, None).unwrap().unbind())
    }

    type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

    /// A front end's request handling over an in-memory connection, with `dispatch` for the methods `/t.T/Query`
    /// and `/t.T/Wait` (one that waits: one waiting thread), and a hyper client speaking HTTP/2 to it.
    async fn connected(dispatch: Py<PyAny>, max_calls: usize, max_message: usize) -> (Sender, Arc<Shared>) {
        let methods = [("/t.T/Query", false), ("/t.T/Wait", true)]
            .into_iter()
            .enumerate()
            .map(|(index, (name, waits))| (name.to_owned(), Method { index, waits, waits_if: 0 }))
            .collect();
        let shared = Arc::new(Shared {
            methods,
            dispatch,
            waiting: Arc::new(Semaphore::new(1)),
            python: Arc::new(Semaphore::new(1)),
            calls: Arc::new(Semaphore::new(max_calls)),
            max_calls,
            max_message,
            backend: Client::builder(TokioExecutor::new()).http2_only(true).build_http(),
            backend_authority: "127.0.0.1:9".to_owned(),
            health: RwLock::new(HashMap::new()),
            health_checks: Default::default(),
        });
        let limits = Http2Limits {
            max_concurrent_streams: 8,
            max_header_list_bytes: 4096,
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(20),
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
        };
        let (client, server) = tokio::io::duplex(1 << 16);
        let graceful = GracefulShutdown::new();
        tokio::spawn(serve(server, shared.clone(), limits.builder(), graceful.watcher()));
        std::mem::forget(graceful); // the connection lives as long as the test
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        (sender, shared)
    }

    fn call(path: &str, message: &[u8], headers: &[(&'static str, &'static str)]) -> Request<Full<Bytes>> {
        let mut builder = Request::post(format!("http://front{path}")).header("content-type", "application/grpc").header("te", "trailers");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(Full::new(framed(0, message))).unwrap()
    }

    /// grpc-status and grpc-message of an answer (trailers-only or trailers), and its message.
    async fn outcome(sender: &mut Sender, request: Request<Full<Bytes>>) -> (String, String, Bytes) {
        let (parts, body) = sender.send_request(request).await.unwrap().into_parts();
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let bytes = collected.to_bytes();
        let get = |name: &str| {
            parts.headers.get(name).or_else(|| trailers.get(name)).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
        };
        (get("grpc-status"), get("grpc-message"), if bytes.len() >= 5 { bytes.slice(5..) } else { bytes })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metadata_and_the_message_reach_python_and_its_answer_comes_back() {
        // The answer: the request's bytes, then each metadata pair as "key=value;".
        let echo = py_eval("lambda i, data, md, t: (0, '', data + b'|' + ''.join(f'{k}={v};' for k, v in md).encode())");
        let (mut front, _) = connected(echo, 8, 1024).await;
        let request = call("/t.T/Query", b"hi", &[("x-request-id", "r-1"), ("grpc-timeout", "5S"), ("x-tag", "a")]);
        let (code, _, message) = outcome(&mut front, request).await;
        assert_eq!(code, "0");
        assert_eq!(&message[..], b"hi|x-request-id=r-1;x-tag=a;");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_unary_call_with_two_messages_is_refused_not_run() {
        let (mut front, _) = connected(py_eval("lambda i, data, md, t: (0, '', data)"), 8, 64).await;
        let mut request = call("/t.T/Query", b"a", &[]);
        *request.body_mut() = Full::new(Bytes::from([framed(0, b"a"), framed(0, b"b")].concat()));
        let (code, details, _) = outcome(&mut front, request).await;
        assert_eq!((code.as_str(), details.as_str()), ("13", "a%20unary%20call%20takes%20exactly%20one%20request%20message"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn size_and_concurrency_limits_answer_resource_exhausted() {
        let (mut front, _) = connected(py_eval("lambda i, data, md, t: (0, '', b'x' * len(data))"), 8, 16).await;
        let (code, details, _) = outcome(&mut front, call("/t.T/Query", &[1; 17], &[])).await;
        assert_eq!((code.as_str(), details.as_str()), ("8", "the%20request%20is%20larger%20than%20the%20limit%20of%2016%20bytes"));
        let (code, _, message) = outcome(&mut front, call("/t.T/Query", &[1; 16], &[])).await;
        assert_eq!((code.as_str(), message.len()), ("0", 16));

        // One call in flight at most: a held call takes the place, the next is refused at once.
        let event = py_eval("__import__('threading').Event()");
        let dispatch = Python::with_gil(|py| {
            let make = py_eval("lambda e: lambda i, data, md, t: (e.wait(30), (0, '', b'done'))[1]");
            make.call1(py, (event.clone_ref(py),)).unwrap()
        });
        let (mut front, shared) = connected(dispatch, 1, 16).await;
        let mut holder = front.clone();
        let held = tokio::spawn(async move { outcome(&mut holder, call("/t.T/Wait", b"", &[])).await });
        while shared.calls.available_permits() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await; // until the held call has its place
        }
        let (code, details, _) = outcome(&mut front, call("/t.T/Query", b"", &[])).await;
        assert_eq!((code.as_str(), details.as_str()), ("8", "too%20many%20concurrent%20RPCs%20on%20this%20server%20process;%20retry%20later"));
        Python::with_gil(|py| event.call_method0(py, "set").unwrap());
        let (code, _, message) = held.await.unwrap();
        assert_eq!((code.as_str(), &message[..]), ("0", &b"done"[..]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_held_up_in_python_stalls_no_other_call() {
        // One place for Python, two threads: a query held in Python (as behind the engine lock) keeps its place;
        // the next query waits for one without holding the other thread, and is not run once its deadline passes;
        // calls not run in Python are answered meanwhile.
        let event = py_eval("__import__('threading').Event()");
        let dispatch = Python::with_gil(|py| {
            let make = py_eval("lambda e: lambda i, data, md, t: (e.wait(30), (0, '', b'ran:' + data))[1]");
            make.call1(py, (event.clone_ref(py),)).unwrap()
        });
        let (mut front, shared) = connected(dispatch, 8, 64).await;
        let mut holder = front.clone();
        let held = tokio::spawn(async move { outcome(&mut holder, call("/t.T/Query", b"a", &[])).await });
        while shared.python.available_permits() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await; // until the held query is in Python
        }
        let (code, details, _) = outcome(&mut front, call("/t.T/Query", b"b", &[("grpc-timeout", "100m")])).await;
        assert_eq!((code.as_str(), details.as_str()), ("4", "Deadline%20Exceeded"));
        let forwarded = outcome(&mut front, call("/t.T/Other", b"", &[("grpc-timeout", "5S")])).await;
        assert_eq!(forwarded.0, "14", "forwarded to the (absent) backend and answered UNAVAILABLE");
        let json = Request::post("http://front/t.T/Query").header("content-type", "application/json").body(Full::new(Bytes::new())).unwrap();
        assert_eq!(front.send_request(json).await.unwrap().status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        Python::with_gil(|py| event.call_method0(py, "set").unwrap());
        let (code, _, message) = held.await.unwrap();
        assert_eq!((code.as_str(), &message[..]), ("0", &b"ran:a"[..]));
        let (code, _, message) = outcome(&mut front, call("/t.T/Query", b"c", &[])).await;
        assert_eq!((code.as_str(), &message[..]), ("0", &b"ran:c"[..]), "the place is free again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_checks_are_answered_here_while_python_is_held() {
        // Every place for Python held (as by a query behind the engine lock, the GIL held meanwhile): Check is
        // answered from the table Python sets, with grpc's answers for an unknown service and a bad request.
        let event = py_eval("__import__('threading').Event()");
        let dispatch = Python::with_gil(|py| {
            let make = py_eval("lambda e: lambda i, data, md, t: (e.wait(30), (0, '', b'ran:' + data))[1]");
            make.call1(py, (event.clone_ref(py),)).unwrap()
        });
        let (mut front, shared) = connected(dispatch, 8, 64).await;
        shared.health.write().unwrap().extend([(String::new(), 1), ("interest.v1.InterestService".to_owned(), 2)]);
        let mut holder = front.clone();
        let held = tokio::spawn(async move { outcome(&mut holder, call("/t.T/Query", b"a", &[])).await });
        while shared.python.available_permits() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await; // until the held query is in Python
        }
        let check = |message: &[u8]| call(HEALTH_CHECK, message, &[("grpc-timeout", "1S")]);
        assert_eq!(outcome(&mut front, check(b"")).await, ("0".to_owned(), String::new(), Bytes::from_static(&[0x08, 1])));
        let named = b"\x0a\x1binterest.v1.InterestService";
        assert_eq!(outcome(&mut front, check(named)).await, ("0".to_owned(), String::new(), Bytes::from_static(&[0x08, 2])));
        let (code, details, _) = outcome(&mut front, check(b"\x0a\x04nope")).await;
        assert_eq!((code.as_str(), details.as_str()), ("5", "unknown%20service"));
        let (code, _, _) = outcome(&mut front, check(b"\x0a\x09short")).await;
        assert_eq!(code, "3", "a field longer than the message is INVALID_ARGUMENT");
        assert!(!held.is_finished(), "the query is still held in Python");
        let counted: Vec<u64> = shared.health_checks.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        assert_eq!((counted[0], counted[5], counted[3], counted.iter().sum::<u64>()), (2, 1, 1, 4), "counted by code");
        Python::with_gil(|py| event.call_method0(py, "set").unwrap());
        assert_eq!(held.await.unwrap().0, "0");
    }

    #[test]
    fn health_requests_and_responses_are_read_and_written_as_protobuf() {
        assert_eq!(health_service(b""), Some(""));
        assert_eq!(health_service(b"\x0a\x01s"), Some("s"));
        assert_eq!(health_service(b"\x10\x96\x01\x0a\x01s\x1d\x00\x00\x00\x00"), Some("s"), "unknown fields are skipped");
        assert_eq!(health_service(b"\x0a\x02\xff\xfe"), None, "not UTF-8");
        assert_eq!(health_service(b"\x0b"), None, "wire type 3 (groups) is not a HealthCheckRequest's");
        assert_eq!(&health_response(0)[..], b"");
        assert_eq!(&health_response(3)[..], b"\x08\x03");
        assert_eq!(&health_response(300)[..], b"\x08\xac\x02");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_is_not_a_grpc_post_gets_its_http_status() {
        let (mut front, _) = connected(py_eval("lambda i, data, md, t: (0, '', b'')"), 8, 16).await;
        let json = Request::post("http://front/t.T/Query").header("content-type", "application/json").body(Full::new(Bytes::new())).unwrap();
        assert_eq!(front.send_request(json).await.unwrap().status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let get = Request::get("http://front/t.T/Query").header("content-type", "application/grpc").body(Full::new(Bytes::new())).unwrap();
        let answer = front.send_request(get).await.unwrap();
        assert_eq!(answer.status(), http::StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.headers()["allow"], "POST");
    }

    #[test]
    fn unframe_takes_exactly_one_uncompressed_message() {
        assert_eq!(unframe(&framed(0, b"abc")), Some(Bytes::from_static(b"abc")));
        assert_eq!(unframe(&framed(0, b"")), Some(Bytes::new()));
        assert_eq!(unframe(&framed(1, b"abc")), None, "compressed: tonic's to read");
        assert_eq!(unframe(&Bytes::from_static(&[0, 0, 0, 0])), None, "prefix cut short");
        assert_eq!(unframe(&Bytes::new()), None, "empty body");
        assert_eq!(unframe(&framed(0, b"abc").slice(..7)), None, "message cut short");
        assert_eq!(unframe(&Bytes::from([framed(0, b"a"), framed(0, b"b")].concat())), None, "two messages");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compressed_call_goes_through_tonic_and_reaches_python_decompressed() {
        use std::io::Write;
        let (mut front, _) = connected(py_eval("lambda i, data, md, t: (0, '', b'got:' + data)"), 8, 1024).await;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"hello").unwrap();
        let mut request = call("/t.T/Query", b"", &[("grpc-encoding", "gzip")]);
        *request.body_mut() = Full::new(framed(1, &gz.finish().unwrap()));
        let (code, _, message) = outcome(&mut front, request).await;
        assert_eq!((code.as_str(), &message[..]), ("0", &b"got:hello"[..]));
        let (code, _, message) = outcome(&mut front, call("/t.T/Query", b"plain", &[])).await;
        assert_eq!((code.as_str(), &message[..]), ("0", &b"got:plain"[..]), "and an uncompressed one beside it");
    }

    #[test]
    fn deadlines_expire_at_their_instant() {
        assert!(!expired(None));
        assert!(expired(Some(Instant::now())));
        assert!(!expired(Some(Instant::now() + Duration::from_secs(60))));
    }
}
