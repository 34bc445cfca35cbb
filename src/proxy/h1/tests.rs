use http::{Method, StatusCode};
use proptest::prelude::*;

use super::*;

fn parse(text: &str, method: Method) -> io::Result<Parsed> {
    parse_response(&mut BytesMut::from(text), &method, false)
}

fn head(text: &str) -> Head {
    head_of(text, Method::GET)
}

fn head_of(text: &str, method: Method) -> Head {
    match parse(text, method) {
        Ok(Parsed::Head(head)) => head,
        Ok(_) => panic!("not a whole head: {text:?}"),
        Err(e) => panic!("refused {text:?}: {e}"),
    }
}

/// The fields a client gets, as `name: value` lines.
fn passed(head: &Head) -> Vec<String> {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    head.fields.iter().map(|(name, value)| format!("{}: {}", text(name), text(value))).collect()
}

#[test]
fn chunk_size_lines_are_hex() {
    let mut line = [0; 18];
    assert_eq!(chunk_size_line(0, &mut line), b"0\r\n");
    assert_eq!(chunk_size_line(255, &mut line), b"ff\r\n");
    assert_eq!(chunk_size_line(4096, &mut line), b"1000\r\n");
    assert_eq!(chunk_size_line(usize::MAX, &mut line), b"ffffffffffffffff\r\n");
}

#[test]
fn a_head_is_taken_off_the_buffer_with_its_fields() {
    let mut buf = BytesMut::from("HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 3\r\n\r\nabc");
    let Ok(Parsed::Head(head)) = parse_response(&mut buf, &Method::GET, false) else { panic!("no head") };
    assert_eq!(head.status, StatusCode::CREATED);
    assert_eq!(passed(&head), ["X-A: 1", "x-a: 2"]);
    assert_eq!((head.body, head.keep_alive), (Decoder::Length(3), true));
    assert_eq!(&buf[..], b"abc");
}

#[test]
fn a_partial_head_waits_and_an_endless_one_is_refused() {
    assert!(matches!(parse("HTTP/1.1 200 OK\r\ncontent-len", Method::GET), Ok(Parsed::Partial)));
    let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
    assert!(parse(&endless, Method::GET).is_err());
    assert!(parse("HTTP/1.1 2000 OK\r\n\r\n", Method::GET).is_err());
    assert!(parse("HTTP/1.1 200 OK\r\nbad field\r\n\r\n", Method::GET).is_err());
    let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: 1\r\n")).collect();
    assert!(parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), Method::GET).is_err());
}

#[test]
fn interim_answers_are_skipped_and_101_needs_an_upgrade() {
    let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
    assert!(matches!(parse_response(&mut buf, &Method::POST, false), Ok(Parsed::Interim)));
    let Ok(Parsed::Head(head)) = parse_response(&mut buf, &Method::POST, false) else { panic!("no head") };
    assert_eq!((head.status, head.body), (StatusCode::NO_CONTENT, Decoder::Done));
    let switch = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
    assert!(parse(switch, Method::GET).is_err());
    let Ok(Parsed::Head(head)) = parse_response(&mut BytesMut::from(switch), &Method::GET, true) else {
        panic!("no head")
    };
    assert_eq!(passed(&head), ["upgrade: websocket"], "the front writes its own Connection");
    assert_eq!((head.body, head.keep_alive), (Decoder::Done, false));
}

#[test]
fn the_body_framing_follows_rfc_9112() {
    let of = |text: &str| {
        let head = head(text);
        (head.body, head.keep_alive)
    };
    assert_eq!(of("HTTP/1.1 200 OK\r\n\r\n"), (Decoder::UntilClose, false));
    assert_eq!(of("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"), (Decoder::Done, true));
    assert_eq!(of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"), (Decoder::chunked(), true));
    assert_eq!(of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"), (Decoder::UntilClose, false));
    assert_eq!(of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"), (Decoder::chunked(), true));
    assert_eq!(of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"), (Decoder::Length(5), false));
    assert_eq!(of("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n"), (Decoder::Length(5), false));
    assert_eq!(
        of("HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: Keep-Alive\r\n\r\n"),
        (Decoder::Length(5), true)
    );
    // A HEAD answer has no body whatever its fields say.
    let head = head_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD);
    assert_eq!(head.body, Decoder::Done);
    assert_eq!(passed(&head), ["content-length: 5"], "the length of the body a GET would get");
    let head = head_of("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", Method::HEAD);
    assert_eq!((passed(&head), head.body), (vec![], Decoder::Done), "a 204 has no length");
    let head = head_of("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n", Method::GET);
    assert_eq!((passed(&head), head.body), (vec!["content-length: 5".to_string()], Decoder::Done));
}

#[test]
fn hop_by_hop_fields_are_not_passed_on() {
    let head = head(
        "HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive, X-Private\r\nx-private: 1\r\n\
         Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nUpgrade: y\r\nTE: gzip\r\nDate: D\r\n\
         Content-Length: 2\r\nX-Empty:\r\n\r\n",
    );
    assert_eq!(passed(&head), ["Server: s", "Date: D", "X-Empty: "]);
    assert!(head.fields.dated());
    assert_eq!(passed(&self::head("HTTP/1.1 200 OK\r\nTE: trailers\r\n\r\n")), ["TE: trailers"]);
    // An h2c client gets them as a map, lowercase.
    let mut map = HeaderMap::new();
    head.fields.into_map(&mut map);
    let names: Vec<_> = map.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["server", "date", "x-empty"]);
}

#[test]
fn conflicting_lengths_are_refused_and_transfer_encoding_wins() {
    assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n", Method::GET).is_err());
    assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n", Method::GET).is_err());
    assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n", Method::GET).is_err());
    assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n", Method::GET).is_err());
    for same in ["content-length: 5\r\ncontent-length: 5, 5", "content-length: 5,5", "content-length:  5 "] {
        let same = head(&format!("HTTP/1.1 200 OK\r\n{same}\r\n\r\n"));
        assert_eq!(same.body, Decoder::Length(5));
        assert!(passed(&same).is_empty(), "the client's length is sluice's");
    }
    let both = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n");
    assert!(passed(&both).is_empty(), "neither is passed on");
    assert_eq!((both.body, both.keep_alive), (Decoder::chunked(), false));
}

/// Feeds `wire` to a decoder in pieces of `step` bytes; the body, its trailers and
/// what is left after it.
fn decode_all(mut decoder: Decoder, wire: &[u8], step: usize, close: bool) -> io::Result<(Vec<u8>, HeaderMap)> {
    let (mut buf, mut body, mut trailers) = (BytesMut::new(), Vec::new(), HeaderMap::new());
    let mut pieces = wire.chunks(step.max(1));
    loop {
        match decoder.decode(&mut buf, false)? {
            Event::Data(data) => body.extend_from_slice(&data),
            Event::Trailers(t) => trailers = t,
            Event::End => {
                assert!(buf.is_empty() && pieces.next().is_none(), "bytes left after the body");
                return Ok((body, trailers));
            }
            Event::More => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None if close => match decoder.decode(&mut buf, true)? {
                    Event::End => return Ok((body, trailers)),
                    other => panic!("{other:?} after the close"),
                },
                None => panic!("wants more than the whole body"),
            },
        }
    }
}

proptest! {
    #[test]
    fn chunked_bodies_decode_whatever_the_pieces(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..6),
        step in 1usize..64,
        with_trailer in any::<bool>(),
    ) {
        let mut wire = Vec::new();
        for chunk in &chunks {
            wire.extend_from_slice(format!("{:X};ext=1\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(if with_trailer { b"0\r\nx-sum: 7\r\n\r\n" } else { b"0\r\n\r\n" });
        let (body, trailers) = decode_all(Decoder::chunked(), &wire, step, false).unwrap();
        prop_assert_eq!(body, chunks.concat());
        prop_assert_eq!(trailers.get("x-sum").is_some(), with_trailer);
    }

    #[test]
    fn sized_and_close_delimited_bodies_decode_whatever_the_pieces(
        data in prop::collection::vec(any::<u8>(), 0..2000),
        step in 1usize..700,
    ) {
        let (body, _) = decode_all(Decoder::Length(data.len() as u64), &data, step, false).unwrap();
        prop_assert_eq!(&body, &data);
        let (body, _) = decode_all(Decoder::UntilClose, &data, step, true).unwrap();
        prop_assert_eq!(body, data);
    }
}

#[test]
fn broken_chunked_framing_is_an_error() {
    for wire in [&b"zz\r\nab\r\n0\r\n\r\n"[..], b"2\r\nabc\r\n0\r\n\r\n", b"2 x\r\nab\r\n0\r\n\r\n", b"\r\n"] {
        assert!(decode_all(Decoder::chunked(), wire, 3, false).is_err(), "{:?}", String::from_utf8_lossy(wire));
    }
    let endless = vec![b'1'; MAX_CHUNK_LINE + 10];
    assert!(decode_all(Decoder::chunked(), &endless, 1000, false).is_err());
}

#[test]
fn a_close_mid_body_is_an_error() {
    let mut buf = BytesMut::from("ab");
    let mut sized = Decoder::Length(5);
    assert!(matches!(sized.decode(&mut buf, false), Ok(Event::Data(_))));
    assert_eq!(sized.decode(&mut buf, true).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    let mut chunked = Decoder::chunked();
    assert_eq!(chunked.decode(&mut BytesMut::from("5\r\nab"), true).map(|_| ()).ok(), Some(()));
    assert!(chunked.decode(&mut BytesMut::new(), true).is_err());
}

fn request(text: &str) -> Result<Option<RequestHead>, Refused> {
    parse_request(&mut BytesMut::from(text), 8192)
}

#[test]
fn a_request_head_is_taken_off_the_buffer_with_its_framing() {
    let mut buf = BytesMut::from("POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabcGET");
    let head = parse_request(&mut buf, 8192).unwrap().unwrap();
    assert_eq!((&head.method, head.uri.to_string()), (&Method::POST, "/a?b=1".to_owned()));
    assert_eq!(head.fields.get("x-a"), Some(&b"1"[..]));
    assert_eq!((head.body, head.keep_alive, head.expect_continue), (Decoder::Length(3), true, false));
    assert_eq!(&buf[..], b"abcGET");

    let head = request("PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked \r\nExpect: 100-Continue\r\n\r\n");
    let head = head.unwrap().unwrap();
    assert_eq!((head.body, head.expect_continue, head.trailers), (Decoder::chunked(), true, false));
    let head = request("GET / HTTP/1.1\r\nHost: x\r\nTE: gzip;q=0.5, Trailers\r\n\r\n").unwrap().unwrap();
    assert!(head.trailers);
    let head = request("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let head = head.unwrap().unwrap();
    assert_eq!((head.body, head.keep_alive), (Decoder::Done, false));
    assert!(request("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none(), "a partial head waits");
}

#[test]
fn an_upgrade_is_asked_by_both_fields_in_http_1_1() {
    let upgrade = |head: &str| request(head).unwrap().unwrap().upgrade;
    assert!(upgrade("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nupgrade: ws\r\n\r\n"));
    assert!(!upgrade("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: ws\r\n\r\n"), "not a connection option");
    assert!(!upgrade("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n"), "no protocol named");
    assert!(!upgrade("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n"), "HTTP/1.0");
}

#[test]
fn http10_keeps_the_connection_only_when_asked_and_needs_no_host() {
    let keep = |text: &str| request(text).unwrap().unwrap().keep_alive;
    assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
    assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    assert!(!keep("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"));
    assert!(!request("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").unwrap().unwrap().expect_continue);
}

#[test]
fn heads_that_could_be_read_two_ways_are_refused() {
    let status = |text: &str| request(text).map(|_| ()).map_err(|Refused(status, _)| status.as_u16());
    for (text, code) in [
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", 400),
        // A well-formed coding sluice does not decode: 501. Anything else odd: 400.
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \u{a0}chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\u{a0}\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\x0c\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\n\r\n", 400),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET x:1 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n", 400),
        ("GET / HTTP/3\r\nHost: x\r\n\r\n", 505),
    ] {
        assert_eq!(status(text), Err(code), "{text:?}");
    }
    // The same length twice, in two fields, is one length.
    let head = request("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(head.unwrap().unwrap().body, Decoder::Length(2));
}

#[test]
fn heads_over_the_limit_are_431() {
    let long = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(request(&long).unwrap_err().0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
    assert_eq!(request(&endless).unwrap_err().0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(request(&many).unwrap_err().0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[test]
fn response_heads_carry_sluices_framing_and_connection() {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
    headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert("x-a", HeaderValue::from_static("1"));
    let write = |headers: &HeaderMap, framing, connection| {
        let mut out = Vec::new();
        write_response_head(StatusCode::OK, None, headers, framing, connection, b"D", &mut out);
        String::from_utf8(out).unwrap()
    };
    assert_eq!(
        write(&headers, Framing::Length(3), None),
        "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 3\r\ndate: D\r\n\r\n"
    );
    assert_eq!(
        write(&headers, Framing::Chunked, Some("close")),
        "HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\nconnection: close\r\ndate: D\r\n\r\n"
    );
    assert_eq!(
        write(&headers, Framing::AsSent, None),
        "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\nx-a: 1\r\ndate: D\r\n\r\n"
    );
    headers.insert(header::DATE, HeaderValue::from_static("Then"));
    assert!(write(&headers, Framing::None, None).ends_with("date: Then\r\n\r\n"), "a date that came is kept");

    // The service's fields go first, as they came; sluice's after them.
    let service = head("HTTP/1.1 200 OK\r\nServer: s\r\nDate: Then\r\nContent-Length: 1\r\n\r\n");
    let local = HeaderMap::from_iter([(header::CONNECTION, HeaderValue::from_static("close"))]);
    let mut out = Vec::new();
    write_response_head(StatusCode::OK, Some(&service.fields), &local, Framing::Length(1), None, b"D", &mut out);
    assert_eq!(out, b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: Then\r\ncontent-length: 1\r\n\r\n");
}
