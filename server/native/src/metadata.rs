//! Request metadata as the handler's context shows it (`NativeContext.invocation_metadata`), and the checks a
//! request passes before any gRPC handling.

use http::{HeaderMap, Method as HttpMethod};

/// Headers that are not metadata: hop-by-hop ones (RFC 9110 7.6.1, and `te`, which gRPC requires but which is
/// about the connection), and the transport's own, consumed here (grpc's Python server hides them too).
/// Pseudo-headers (`:path`, ...) never reach the header map.
const NOT_METADATA: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "content-type",
    "content-length",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
];

/// One metadata value: text, or the decoded bytes of a `-bin` key (sent base64-encoded), as grpc gives them.
/// Text borrows from the request's headers: the call's Python strings are made from it directly.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Text(&'a str),
    Binary(Vec<u8>),
}

/// The request's metadata in order; a text value that is not visible ASCII, or a `-bin` value that is not
/// base64, is left out rather than failing the call (grpc drops such entries as well).
pub(crate) fn request_metadata(headers: &HeaderMap) -> impl Iterator<Item = (&str, Value<'_>)> {
    headers.iter().filter_map(|(name, value)| {
        let key = name.as_str();
        if NOT_METADATA.contains(&key) {
            return None;
        }
        let value = if key.ends_with("-bin") {
            Value::Binary(decode_base64(value.as_bytes())?)
        } else {
            Value::Text(value.to_str().ok()?)
        };
        Some((key, value))
    })
}

/// Base64, standard or URL-safe alphabet, padded or not (gRPC senders may omit the padding).
fn decode_base64(data: &[u8]) -> Option<Vec<u8>> {
    let digits: &[u8] = match data.iter().position(|&b| b == b'=') {
        Some(pad) if data[pad..].iter().all(|&b| b == b'=') && data[pad..].len() <= 2 => &data[..pad],
        Some(_) => return None,
        None => data,
    };
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in digits {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Why a request is not a gRPC call, as the HTTP status the gRPC spec (PROTOCOL-HTTP2.md) prescribes: 405 for
/// a method other than POST, 415 for a content-type that is not application/grpc[+proto|;...]: a gRPC error
/// would travel with HTTP 200, which a plain HTTP client takes for success.
pub(crate) fn refusal(method: &HttpMethod, headers: &HeaderMap) -> Option<http::StatusCode> {
    if method != HttpMethod::POST {
        return Some(http::StatusCode::METHOD_NOT_ALLOWED);
    }
    const GRPC: &[u8] = b"application/grpc";
    let grpc = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        let ct = ct.as_bytes();  // compared without a lowercased copy: this runs on every call
        ct.get(..GRPC.len()).is_some_and(|head| head.eq_ignore_ascii_case(GRPC)) && matches!(ct.get(GRPC.len()), None | Some(b'+' | b';'))
    });
    (!grpc).then_some(http::StatusCode::UNSUPPORTED_MEDIA_TYPE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn every_key_but_hop_by_hop_and_transport_headers_is_metadata() {
        let map = headers(&[
            ("content-type", b"application/grpc"),
            ("te", b"trailers"),
            ("connection", b"keep-alive"),
            ("grpc-timeout", b"1S"),
            ("grpc-accept-encoding", b"gzip"),
            ("authorization", b"Bearer t"),
            ("x-request-id", b"abc-123"),
            ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("user-agent", b"grpc-python/1.70"),
        ]);
        let keys: Vec<_> = request_metadata(&map).map(|(k, _)| k).collect();
        assert_eq!(keys, ["authorization", "x-request-id", "traceparent", "user-agent"]);
    }

    #[test]
    fn repeated_keys_keep_every_value_in_order() {
        let map = headers(&[("x-tag", b"a"), ("x-tag", b"b")]);
        assert_eq!(
            request_metadata(&map).collect::<Vec<_>>(),
            [("x-tag", Value::Text("a")), ("x-tag", Value::Text("b"))]
        );
    }

    #[test]
    fn binary_values_are_decoded_and_bad_ones_dropped() {
        let map = headers(&[("trace-bin", b"AAEC/w"), ("padded-bin", b"AAEC/w=="), ("bad-bin", b"!!"), ("latin", b"caf\xe9")]);
        assert_eq!(
            request_metadata(&map).collect::<Vec<_>>(),
            [("trace-bin", Value::Binary(vec![0, 1, 2, 255])), ("padded-bin", Value::Binary(vec![0, 1, 2, 255]))]
        );
    }

    #[test]
    fn base64_reads_both_alphabets_and_rejects_malformed_input() {
        assert_eq!(decode_base64(b"aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(decode_base64(b"-_8"), decode_base64(b"+/8="));
        assert_eq!(decode_base64(b""), Some(vec![]));
        for bad in [&b"a"[..], b"ab=c", b"ab===", b"a b"] {
            assert_eq!(decode_base64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_a_grpc_post_passes() {
        let grpc = headers(&[("content-type", b"application/grpc")]);
        assert_eq!(refusal(&HttpMethod::POST, &grpc), None);
        assert_eq!(refusal(&HttpMethod::POST, &headers(&[("content-type", b"application/grpc+proto")])), None);
        assert_eq!(refusal(&HttpMethod::GET, &grpc), Some(http::StatusCode::METHOD_NOT_ALLOWED));
        assert_eq!(refusal(&HttpMethod::POST, &headers(&[("content-type", b"Application/GRPC;charset=x")])), None);
        for ct in [&b"application/json"[..], b"application/grpcx", b"application/grp", b"text/plain"] {
            let map = headers(&[("content-type", Box::leak(ct.to_vec().into_boxed_slice()))]);
            assert_eq!(refusal(&HttpMethod::POST, &map), Some(http::StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        assert_eq!(refusal(&HttpMethod::POST, &HeaderMap::new()), Some(http::StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
}
