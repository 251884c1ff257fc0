use super::*;

const MAX: usize = 64 * 1024;

/// Feed `input` in pieces split at `splits`; the first refusal with its absolute offset.
fn run(input: &[u8], splits: &[usize]) -> (Scanner, Option<(usize, Refusal)>) {
    let mut s = Scanner::new(MAX);
    let mut from = 0;
    for &to in splits.iter().chain(std::iter::once(&input.len())) {
        if let Err((at, why)) = s.feed(&input[from..to]) {
            return (s, Some((from + at, why)));
        }
        from = to;
    }
    (s, None)
}

/// The end of the last head in `input` (the index of its final LF), if any.
fn last_head_end(input: &[u8]) -> Option<usize> {
    let lf = input.windows(2).rposition(|w| w == b"\n\n").map(|p| p + 1);
    let crlf = input.windows(4).rposition(|w| w == b"\r\n\r\n").map(|p| p + 3);
    lf.into_iter().chain(crlf).max()
}

/// The same outcome whether the bytes come at once, one by one, or split in two anywhere (the
/// whole-line and the byte-wise paths agree); a refusal always points before the end of the
/// refused head, so hyper never receives it whole.
fn outcome(input: &[u8]) -> Option<(usize, Refusal)> {
    let (scanner, whole) = run(input, &[]);
    let state = |s: &Scanner| (s.phase, s.opaque(), s.heads(), s.in_head());
    let singles: Vec<usize> = (1..input.len()).collect();
    let mut runs = Vec::new();
    let mut check = |how: String, (s, r): (Scanner, Option<(usize, Refusal)>)| {
        if r.is_none() && whole.is_none() {
            assert_eq!(state(&s), state(&scanner), "{how}: where the scanner ends up");
        }
        runs.push((how, r));
    };
    check("byte by byte".to_string(), run(input, &singles));
    for cut in 1..input.len() {
        check(format!("split at {cut}"), run(input, &[cut]));
    }
    let end = last_head_end(input);
    for (how, r) in runs.iter().chain(std::iter::once(&("at once".to_string(), whole))) {
        assert_eq!(r.map(|r| r.1), whole.map(|r| r.1), "{how}");
        if let (Some((at, _)), Some(end)) = (r, end) {
            assert!(*at <= end, "{how}: refused at {at}, after the head's end {end}");
        }
    }
    whole
}

fn refused(input: &[u8]) -> Refusal {
    let (_, why) = outcome(input).unwrap_or_else(|| panic!("not refused: {:?}", String::from_utf8_lossy(input)));
    why
}

#[test]
fn plain_requests_pass_and_leave_the_scanner_at_rest() {
    for req in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nUpgrade-Insecure-Requests: 1\r\nContent-Type: a\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /a HTTP/1.1\r\nContent-Length: 5\r\ncontent-length:5 \r\n\r\nhello",
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    ] {
        assert_eq!(outcome(req), None, "{:?}", String::from_utf8_lossy(req));
        let (s, _) = run(req, &[]);
        assert!(!s.in_head() && s.opaque().is_none() && s.phase == Phase::Head);
    }
}

#[test]
fn a_head_is_in_progress_only_once_its_request_line_began() {
    let (s, _) = run(b"\r\n", &[]);
    assert!(!s.in_head());
    let (s, _) = run(b"GET / HT", &[]);
    assert!(s.in_head());
    let (s, _) = run(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab", &[]);
    assert!(!s.in_head(), "in a body, not a head");
    let (s, _) = run(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcG", &[]);
    assert!(s.in_head(), "the next head began");
}

#[test]
fn length_and_chunked_together_are_refused_whichever_comes_first() {
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Refusal::LengthAndChunked
    );
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n0\r\n\r\n"),
        Refusal::LengthAndChunked
    );
}

#[test]
fn bad_lengths_and_codings_are_refused() {
    for (req, why) in [
        (
            &b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello"[..],
            Refusal::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4x\r\n\r\n",
            Refusal::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
            Refusal::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4 4\r\n\r\n",
            Refusal::BadContentLength,
        ),
        (b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", Refusal::BadContentLength),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            Refusal::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            Refusal::BadTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Refusal::BadTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            Refusal::BadTransferEncoding,
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            Refusal::BadTransferEncoding,
        ),
        (b"GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", Refusal::LineFolding),
        (b"GET / HTTP/1.1\r\nX-A: a\r\n\tb\r\n\r\n", Refusal::LineFolding),
    ] {
        assert_eq!(refused(req), why, "{:?}", String::from_utf8_lossy(req));
    }
}

#[test]
fn heads_over_the_limits_are_refused() {
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..MAX_FIELDS {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    let mut ok = many.clone();
    ok.extend_from_slice(b"\r\n");
    assert_eq!(run(&ok, &[]).1, None, "{MAX_FIELDS} fields are fine");
    many.extend_from_slice(b"X-last: v\r\n\r\n");
    assert_eq!(run(&many, &[]).1.map(|r| r.1), Some(Refusal::TooManyFields));

    let mut s = Scanner::new(1024);
    let big = format!("GET / HTTP/1.1\r\nCookie: {}\r\n\r\n", "a".repeat(1000));
    let (at, why) = s.feed(big.as_bytes()).unwrap_err();
    assert_eq!(why, Refusal::HeadTooLarge);
    assert!(at < big.len() - 1);
    // Exactly at the limit is fine; one byte more is not.
    let head = |n: usize| {
        let fixed = "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(n - fixed))
    };
    assert_eq!(Scanner::new(1024).feed(head(1024).as_bytes()), Ok(()));
    assert_eq!(
        Scanner::new(1024).feed(head(1025).as_bytes()).map_err(|e| e.1),
        Err(Refusal::HeadTooLarge)
    );
}

#[test]
fn pipelined_requests_are_each_followed_through_their_bodies() {
    // A body that looks like a head is a body; the head after it is a head.
    let mut stream = b"POST /a HTTP/1.1\r\nContent-Length: 62\r\n\r\n".to_vec();
    let fake = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.extend_from_slice(&fake[..62]);
    stream.extend_from_slice(b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    stream.extend_from_slice(b"3e\r\n");
    stream.extend_from_slice(&fake[..62]);
    stream.extend_from_slice(b"\r\n0\r\n\r\n");
    stream.extend_from_slice(b"GET /c HTTP/1.1\r\n\r\n");
    assert_eq!(outcome(&stream), None);
    let good = stream.len();
    stream.extend_from_slice(b"POST /d HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
    let (at, why) = outcome(&stream).expect("the smuggled head is refused");
    assert_eq!(why, Refusal::LengthAndChunked);
    assert!(at > good, "the requests before it pass whole");
}

#[test]
fn the_scanner_stops_at_upgrades_and_http2() {
    let (s, r) = run(
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello",
        &[],
    );
    assert_eq!((r, s.opaque()), (None, Some(Opaque::Upgrade)));
    let (s, r) = run(b"CONNECT x:443 HTTP/1.1\r\n\r\nGARBAGE\r\n\r\n", &[]);
    assert_eq!((r, s.opaque()), (None, Some(Opaque::Upgrade)));
    let (s, _) = run(b"GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n", &[]);
    assert_eq!(s.opaque(), None, "HTTP/1.0 cannot upgrade");
    let (s, r) = run(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        &[],
    );
    assert_eq!((r, s.opaque()), (None, Some(Opaque::Http2)));
    let (s, _) = run(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", &[]);
    assert_eq!(s.opaque(), Some(Opaque::Lost), "an unreadable chunk size");
}
