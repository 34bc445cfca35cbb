//! sluice's reading of requests from clients against hyper's, on the same bytes: two
//! requests back to back, from a grammar rich in framing mistakes and smuggling attempts
//! (both framings, repeated or malformed lengths, odd codings, bare LF, obs-fold, broken
//! chunks, versions, target forms).
//!
//! Whatever sluice forwards, hyper must read the same way: the same requests, in order,
//! with the same targets and bodies. sluice may stop sooner (it refuses more: a request
//! with both framings, a coding other than chunked, HTTP/1.1 without Host), never later
//! and never differently. So the requests sluice reads are always a prefix of hyper's.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::h1::{parse_request, Event};

/// One request as read: method, target, and the body (`None`: its framing broke).
type Seen = (String, String, Option<Bytes>);

/// The requests sluice forwards from `bytes`, and the body of each, as the front reads them.
fn ours(bytes: &[u8]) -> Vec<Seen> {
    let mut buf = BytesMut::from(bytes);
    let mut seen = Vec::new();
    while let Ok(Some(head)) = parse_request(&mut buf, 64 * 1024) {
        let (method, target) = (head.method.to_string(), head.uri.to_string());
        let mut decoder = head.body;
        let mut body = Some(BytesMut::new());
        loop {
            match decoder.decode(&mut buf, true) {
                Ok(Event::Data(data)) => body.as_mut().expect("not failed").extend_from_slice(&data),
                Ok(Event::Trailers(_)) => {}
                Ok(Event::End) => break,
                Ok(Event::More) => unreachable!("all the bytes are there"),
                Err(_) => {
                    body = None;
                    break;
                }
            }
        }
        let failed = body.is_none();
        seen.push((method, target, body.map(BytesMut::freeze)));
        if failed || !head.keep_alive {
            break;
        }
    }
    seen
}

/// The requests hyper's HTTP/1 server reads from `bytes`, sent on one connection.
async fn hypers(bytes: &[u8]) -> Vec<Seen> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (client, server) = tokio::io::duplex(1 << 20);
    let record = seen.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (method, target) = (req.method().to_string(), req.uri().to_string());
            let body = req.into_body().collect().await.ok().map(|b| b.to_bytes());
            record.lock().unwrap().push((method, target, body));
            Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
        }
    });
    let serving = tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .half_close(true) // the end of the input is not the end of the requests in it
            .serve_connection(TokioIo::new(server), service)
            .await;
    });
    let (mut read, mut write) = tokio::io::split(client);
    write.write_all(bytes).await.unwrap();
    write.shutdown().await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read.read_to_end(&mut sink)).await;
    serving.abort();
    let seen = seen.lock().unwrap().clone();
    seen
}

fn request() -> impl Strategy<Value = String> {
    let pick = |options: &'static [&'static str]| prop::sample::select(options);
    let method = pick(&["GET", "POST", "PUT", "G ET", "G\tET"]);
    let target = pick(&["/a", "/b?x=1", "http://h/c", "*", "h:80", "/a b", "/%zz", ""]);
    let version = prop_oneof![
        8 => Just("HTTP/1.1"),
        2 => Just("HTTP/1.0"),
        1 => Just("HTTP/2.0"),
        1 => Just("HTTP/1.2"),
        1 => Just("http/1.1"),
    ];
    let eol = prop_oneof![6 => Just("\r\n"), 1 => Just("\n")];
    let field = prop_oneof![
        4 => Just("Host: x"),
        1 => Just("Host: y"),
        3 => Just("Content-Length: 3"),
        1 => Just("Content-Length: 0"),
        1 => Just("Content-Length: 5"),
        1 => Just("Content-Length: 3, 3"),
        1 => Just("Content-Length: 3,4"),
        1 => Just("Content-Length: +3"),
        1 => Just("Content-Length: -1"),
        1 => Just("Content-Length: 0x3"),
        1 => Just("Content-Length: 99999999999999999999"),
        1 => Just("Content-Length : 3"),
        3 => Just("Transfer-Encoding: chunked"),
        1 => Just("Transfer-Encoding: Chunked "),
        1 => Just("Transfer-Encoding: gzip, chunked"),
        1 => Just("Transfer-Encoding: chunked, gzip"),
        1 => Just("Transfer-Encoding: identity"),
        1 => Just("Transfer-Encoding: chunked\x0b"),
        1 => Just("Transfer-Encoding:\tchunked"),
        1 => Just("Transfer-Encoding : chunked"),
        1 => Just("X-Folded: a\r\n chunked"),
        1 => Just(" Transfer-Encoding: chunked"),
        1 => Just("Connection: close"),
        1 => Just("Connection: keep-alive"),
        1 => Just("Expect: 100-continue"),
        1 => Just("X-Nul: a\0b"),
        1 => Just("X-Empty:"),
    ];
    let body = prop_oneof![
        3 => Just(""),
        3 => Just("abc"),
        1 => Just("abcde"),
        3 => Just("3\r\nabc\r\n0\r\n\r\n"),
        1 => Just("3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n"),
        1 => Just("3\r\nabcX\r\n0\r\n\r\n"),
        1 => Just("3\nabc\n0\n\n"),
        1 => Just("fffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
        1 => Just("-3\r\nabc\r\n0\r\n\r\n"),
        1 => Just("3 \r\nabc\r\n0\r\n\r\n"),
        1 => Just("0\r\n\r\n"),
    ];
    (method, target, version, eol, prop::collection::vec(field, 0..4), body).prop_map(
        |(method, target, version, eol, fields, body)| {
            let mut text = format!("{method} {target} {version}{eol}");
            for field in fields {
                text.push_str(field);
                text.push_str(eol);
            }
            text.push_str(eol);
            text.push_str(body);
            text
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn sluice_reads_a_prefix_of_what_hyper_reads(first in request(), second in request()) {
        let bytes = format!("{first}{second}");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let theirs = runtime.block_on(hypers(bytes.as_bytes()));
        let ours = ours(bytes.as_bytes());
        prop_assert!(ours.len() <= theirs.len() && ours[..] == theirs[..ours.len()],
            "input {bytes:?}\nsluice {ours:?}\nhyper  {theirs:?}");
    }
}

/// The grammar is not so hostile that nothing passes: well-formed pairs are read whole by
/// both, so the property above compares real requests, not two empty lists.
#[test]
fn well_formed_requests_are_read_alike() {
    let bytes = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
                 PUT /b?x=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let theirs = runtime.block_on(hypers(bytes.as_bytes()));
    let ours = ours(bytes.as_bytes());
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert_eq!(ours, theirs);
}
