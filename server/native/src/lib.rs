//! The native front end of the gRPC server (`server.front` drives it from Python): `TonicFront` (src/grpc.rs),
//! tonic's gRPC framing and status handling over hyper's HTTP/2, TLS through rustls (src/tls.rs), the request
//! metadata and checks (src/metadata.rs); here what they share: the method table, the flag reader, grpc-timeout
//! and bind.
//!
//! It owns the public port. Unary calls of the methods it is given are answered here: HTTP/2, gRPC framing,
//! deadlines, size and concurrency limits run in Rust, and the call itself (validation, auth, metrics, the
//! search, the answer) runs in Python through one `dispatch(method, request_bytes, metadata, timeout_s)
//! -> (status_code, details, response_bytes)` callable: queries on the I/O thread that read them, calls that
//! may wait (on Neo4j; also a query whose request sets a flag that makes it read the graph, such as `explain`) on
//! a bounded pool of their own. Health checks are answered from a table Python sets; every other call (streams,
//! health Watch, reflection) is forwarded to grpc's Python server on a loopback port.
//!
//! Why: on two cores grpc's Python server spent ~140-275 us of CPU per call on transport alone (an echo) and
//! more in thread switches, more than the FAISS search a `SimilarItems` call exists for (bench.serving).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use http::HeaderValue;
use pyo3::prelude::*;

pub(crate) const DEADLINE_PASSED: &str = "Deadline Exceeded";
pub(crate) const INTERNAL_ERROR: &str = "internal error; the server log has the details";
pub(crate) const TOO_MANY: &str = "too many concurrent RPCs on this server process; retry later";

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

#[pymodule]
fn ig_front(m: &Bound<'_, PyModule>) -> PyResult<()> {
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
}
