//! The PROXY protocol (v1 text and v2 binary) from an L4 balancer: a pure incremental parser of
//! the header, its timed read from a new connection, and `Rewind`, which hands the bytes read
//! past the header back to the HTTP server first.
//!
//! Spec: <https://www.haproxy.org/download/1.8/doc/proxy-protocol.txt>. What this parser returns
//! for each case, and why:
//! - v1 `TCP4`/`TCP6`, v2 PROXY over TCP/IPv4 or TCP/IPv6: the addresses.
//! - v1 `UNKNOWN`, v2 LOCAL (the balancer's own connection, e.g. its health check), v2 PROXY
//!   with an unspecified, UDP or UNIX family: no addresses, and the socket peer stands as the
//!   client; HAProxy's receiver does the same.
//! - Anything else malformed is refused, at the first byte that shows it, so a client that does
//!   not speak the protocol is dropped at once rather than at the timeout.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The longest v1 line the spec allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 header accepted. The format allows 16 + 65535 bytes; HAProxy reads the header
/// into one 16 KiB buffer, so senders that work with it stay below, and a connection never
/// holds more than this before it is a client.
pub const V2_MAX_LEN: usize = 16 * 1024;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What `parse` made of the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A valid beginning; more bytes are needed.
    Incomplete,
    /// The header ends at `header_len`; what follows is the client's stream.
    Done {
        source: Option<SocketAddr>,
        destination: Option<SocketAddr>,
        header_len: usize,
    },
}

/// Why a connection's PROXY header was refused. (Not `crate::error::ProxyError`, the request
/// error table: this one ends a connection before any request exists.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no complete PROXY protocol header within the timeout")]
    Timeout,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("PROXY protocol header too long")]
    TooLong,
    /// The connection ended, or failed, before the header did.
    #[error("connection closed before the end of the PROXY protocol header")]
    Closed,
}

use ProxyError::Malformed;

/// Parses the header at the start of `buf`. Pure and total: any input gives `Incomplete`, `Done`
/// or an error, never a panic, and `header_len <= buf.len()`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(Malformed("no PROXY protocol signature")),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(Malformed("bad v1 signature"));
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let more = || {
        if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        }
    };
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return more();
    };
    match window.get(cr..cr + 2) {
        Some(b"\r\n") => {}
        // The CR is the last byte so far: its LF may still come, if the line has room for it.
        None if window[cr] == b'\r' => return more(),
        _ => return Err(Malformed("v1 line does not end with CRLF")),
    }
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..cr]).map_err(|_| Malformed("v1 line is not text"))?;
    let mut fields = line.split(' ');
    let (source, destination) = match fields.next() {
        // The spec has the receiver ignore whatever follows UNKNOWN.
        Some("UNKNOWN") => (None, None),
        Some("TCP4") => v1_addresses(fields, |s| s.parse::<Ipv4Addr>().ok().map(IpAddr::V4))?,
        Some("TCP6") => v1_addresses(fields, |s| s.parse::<Ipv6Addr>().ok().map(IpAddr::V6))?,
        _ => return Err(Malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Done {
        source,
        destination,
        header_len: cr + 2,
    })
}

type Addresses = (Option<SocketAddr>, Option<SocketAddr>);

fn v1_addresses<'a>(
    mut fields: impl Iterator<Item = &'a str>,
    ip: impl Fn(&str) -> Option<IpAddr>,
) -> Result<Addresses, ProxyError> {
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Malformed(
            "v1 TCP line needs two addresses and two ports, one space apart",
        ));
    };
    let addr = |a, p| match (ip(a), v1_port(p)) {
        (Some(ip), Some(port)) => Ok(Some(SocketAddr::new(ip, port))),
        (None, _) => Err(Malformed("bad v1 address")),
        (_, None) => Err(Malformed("bad v1 port")),
    };
    Ok((addr(src, sport)?, addr(dst, dport)?))
}

/// Decimal digits only: `u16::from_str` would also take "+80".
fn v1_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(Malformed("bad v2 signature"));
    }
    let Some(&version_command) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if version_command >> 4 != 2 {
        return Err(Malformed("unsupported v2 version"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Malformed("unknown v2 command")),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // LOCAL: the spec has the receiver discard the whole address block, family included.
    if !local && (family >> 4 > 3 || family & 0x0f > 2) {
        return Err(Malformed("unknown v2 address family or transport"));
    }
    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Ok(Parsed::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let header_len = 16 + len;
    if header_len > V2_MAX_LEN {
        return Err(ProxyError::TooLong);
    }
    // Checked before waiting for the bytes: a length too short to hold its own addresses is a
    // lie now, not at the timeout.
    let addresses_len = match family >> 4 {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if !local && len < addresses_len {
        return Err(Malformed("v2 length shorter than its addresses"));
    }
    let Some(block) = buf.get(16..header_len) else {
        return Ok(Parsed::Incomplete);
    };
    let done = |(source, destination): Addresses| {
        Ok(Parsed::Done {
            source,
            destination,
            header_len,
        })
    };
    if local {
        return done((None, None));
    }
    let (addresses, tlvs) = block.split_at(addresses_len);
    let addresses = match family {
        0x11 => v2_addresses::<4>(addresses),
        0x21 => v2_addresses::<16>(addresses),
        _ => return done((None, None)),
    };
    // TLVs carry nothing waypost uses, but their framing must hold: a TLV running past the
    // header means the length, or the sender, cannot be trusted.
    let mut rest = tlvs;
    while !rest.is_empty() {
        let [_kind, hi, lo, value @ ..] = rest else {
            return Err(Malformed("v2 TLV cut short"));
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        rest = value.get(len..).ok_or(Malformed("v2 TLV runs past the header"))?;
    }
    done(addresses)
}

/// Source address, destination address, source port, destination port, in network order;
/// `block` holds at least `2 * N + 4` bytes, checked against the family above.
fn v2_addresses<const N: usize>(block: &[u8]) -> Addresses
where
    IpAddr: From<[u8; N]>,
{
    let (mut src, mut dst) = ([0; N], [0; N]);
    src.copy_from_slice(&block[..N]);
    dst.copy_from_slice(&block[N..2 * N]);
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    (
        Some(SocketAddr::new(IpAddr::from(src), port(2 * N))),
        Some(SocketAddr::new(IpAddr::from(dst), port(2 * N + 2))),
    )
}

/// Reads the PROXY header from a new connection within `timeout`. Returns the source address
/// (`None`: the socket peer stands as the client) and the bytes read past the header, which the
/// caller replays with [`Rewind`]. Read errors count as `Closed`: the connection is gone either way.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Option<SocketAddr>, Vec<u8>), ProxyError> {
    tokio::time::timeout(timeout, read_until_parsed(stream))
        .await
        .unwrap_or(Err(ProxyError::Timeout))
}

async fn read_until_parsed<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Option<SocketAddr>, Vec<u8>), ProxyError> {
    // Most headers and the start of the first request arrive in one segment.
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Parsed::Done { source, header_len, .. } = parse(&buf)? {
            buf.drain(..header_len);
            return Ok((source, buf));
        }
        buf.reserve(1024);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(ProxyError::Closed),
            Ok(_) => {}
        }
    }
}

/// A stream that yields `prefix` before reading from `inner`; writes go straight to `inner`.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(inner: S, prefix: Vec<u8>) -> Rewind<S> {
        Rewind { prefix, pos: 0, inner }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                // Long-lived connections should not keep the header's buffer.
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn done(source: Option<SocketAddr>, destination: Option<SocketAddr>, header_len: usize) -> Parsed {
        Parsed::Done {
            source,
            destination,
            header_len,
        }
    }

    /// A v2 header: command/version, family, then the address block and TLVs as given.
    fn v2(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([version_command, family]);
        h.extend((block.len() as u16).to_be_bytes());
        h.extend(block);
        h
    }

    fn v2_ipv4(tlvs: &[u8]) -> Vec<u8> {
        let mut block = vec![192, 0, 2, 1, 198, 51, 100, 2, 0x30, 0x39, 0x01, 0xbb];
        block.extend(tlvs);
        v2(0x21, 0x11, &block)
    }

    fn v2_ipv6(tlvs: &[u8]) -> Vec<u8> {
        let mut block = Vec::new();
        block.extend("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        block.extend("2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        block.extend([0x30, 0x39, 0x01, 0xbb]);
        block.extend(tlvs);
        v2(0x21, 0x21, &block)
    }

    /// An ALPN TLV, a NOOP TLV with an empty value, and an authority TLV.
    const TLVS: &[u8] = &[0x01, 0, 2, b'h', b'2', 0x04, 0, 0, 0x02, 0, 3, b'a', b'.', b'b'];

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let cases: [(&[u8], Parsed); 4] = [
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 12345 443\r\nGET",
                done(sa("192.0.2.1:12345"), sa("198.51.100.2:443"), 45),
            ),
            (
                b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 65535 0\r\n",
                done(sa("[2001:db8::1]:65535"), sa("[::ffff:192.0.2.1]:0"), 49),
            ),
            (b"PROXY UNKNOWN\r\n", done(None, None, 15)),
            (b"PROXY UNKNOWN ffff:f...f:ffff 1 2\r\nX", done(None, None, 35)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(want), "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn v2_ipv4_ipv6_and_local_with_tlvs() {
        let v4 = v2_ipv4(TLVS);
        assert_eq!(
            parse(&v4),
            Ok(done(sa("192.0.2.1:12345"), sa("198.51.100.2:443"), 16 + 12 + 14))
        );
        let v6 = v2_ipv6(TLVS);
        assert_eq!(
            parse(&v6),
            Ok(done(sa("[2001:db8::1]:12345"), sa("[2001:db8::2]:443"), 16 + 36 + 14))
        );
        // LOCAL: whatever block follows is discarded, even one that would not parse.
        assert_eq!(parse(&v2(0x20, 0x11, TLVS)), Ok(done(None, None, 16 + 14)));
        assert_eq!(parse(&v2(0x20, 0xff, &[])), Ok(done(None, None, 16)));
        // PROXY over UDP, UNIX or an unspecified family: the socket peer stands.
        assert_eq!(parse(&v2(0x21, 0x12, &[0; 12])), Ok(done(None, None, 28)));
        assert_eq!(parse(&v2(0x21, 0x31, &[0; 216])), Ok(done(None, None, 232)));
        assert_eq!(parse(&v2(0x21, 0x00, b"junk")), Ok(done(None, None, 20)));
        // The longest header taken, padded with a NOOP TLV; one byte more is too long.
        let pad = V2_MAX_LEN - 16 - 12 - 3;
        let longest = v2_ipv4(&[&[0x04][..], &(pad as u16).to_be_bytes(), &vec![0; pad]].concat());
        assert!(matches!(
            parse(&longest),
            Ok(Parsed::Done {
                header_len: V2_MAX_LEN,
                ..
            })
        ));
        let pad = pad + 1;
        let too_long = v2_ipv4(&[&[0x04][..], &(pad as u16).to_be_bytes(), &vec![0; pad]].concat());
        assert_eq!(parse(&too_long[..16]), Err(ProxyError::TooLong));
    }

    #[test]
    fn every_split_point_is_incomplete_until_the_last_header_byte() {
        let headers = [
            b"PROXY TCP4 192.0.2.1 198.51.100.2 12345 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_ipv4(TLVS),
            v2_ipv6(&[]),
            v2(0x20, 0x00, &[]),
        ];
        for h in headers {
            let mut stream = h.clone();
            stream.extend(b"GET / HTTP/1.1\r\n\r\n");
            for cut in 0..h.len() {
                assert_eq!(parse(&stream[..cut]), Ok(Parsed::Incomplete), "{h:?} cut at {cut}");
            }
            let whole = parse(&h).unwrap();
            assert!(matches!(whole, Parsed::Done { header_len, .. } if header_len == h.len()));
            assert_eq!(parse(&stream), Ok(whole));
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(V1_MAX_LEN, b'1');
        // A TCP/IPv4 header whose length claims 11 bytes, one short of its addresses.
        let short_len = [&V2_SIGNATURE[..], &[0x21, 0x11, 0, 11]].concat();
        let cases: Vec<(Vec<u8>, ProxyError)> = vec![
            (b"GET / HTTP/1.1\r\n".to_vec(), Malformed("no PROXY protocol signature")),
            (b"PROXZ".to_vec(), Malformed("bad v1 signature")),
            (b"\r\n\r\n\0\r\nQUIX".to_vec(), Malformed("bad v2 signature")),
            (
                b"\r\n\r\n\0\r\nQUIT\n\x11".to_vec(),
                Malformed("unsupported v2 version"),
            ),
            (b"\r\n\r\n\0\r\nQUIT\n\x22".to_vec(), Malformed("unknown v2 command")),
            (
                b"\r\n\r\n\0\r\nQUIT\n\x21\x41".to_vec(),
                Malformed("unknown v2 address family or transport"),
            ),
            (
                b"\r\n\r\n\0\r\nQUIT\n\x21\x13".to_vec(),
                Malformed("unknown v2 address family or transport"),
            ),
            (short_len, Malformed("v2 length shorter than its addresses")),
            (
                v2(0x21, 0x21, &[0; 35]),
                Malformed("v2 length shorter than its addresses"),
            ),
            (v2_ipv4(&[0x01, 0]), Malformed("v2 TLV cut short")),
            (
                v2_ipv4(&[0x01, 0, 9, b'h', b'2']),
                Malformed("v2 TLV runs past the header"),
            ),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x40\x00".to_vec(), ProxyError::TooLong),
            (long.clone(), ProxyError::TooLong),
            ([&long[..106], b"\r"].concat(), ProxyError::TooLong),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
                Malformed("v1 line does not end with CRLF"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX".to_vec(),
                Malformed("v1 line does not end with CRLF"),
            ),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                Malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN"),
            ),
            (
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                Malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN"),
            ),
            (b"PROXY \xff\r\n".to_vec(), Malformed("v1 line is not text")),
        ];
        for (input, want) in cases {
            assert_eq!(parse(&input), Err(want), "{}", String::from_utf8_lossy(&input));
        }
        let v1_fields = Malformed("v1 TCP line needs two addresses and two ports, one space apart");
        for (line, want) in [
            ("TCP4 1.2.3.4 5.6.7.8 1", v1_fields.clone()),
            ("TCP4 1.2.3.4 5.6.7.8 1 2 3", v1_fields.clone()),
            ("TCP4 1.2.3.4 5.6.7.8 1 2 ", v1_fields),
            ("TCP4 1.2.3.4 ::1 1 2", Malformed("bad v1 address")),
            ("TCP6 1.2.3.4 ::1 1 2", Malformed("bad v1 address")),
            ("TCP4 1.2.3.256 5.6.7.8 1 2", Malformed("bad v1 address")),
            ("TCP4 01.2.3.4 5.6.7.8 1 2", Malformed("bad v1 address")),
            ("TCP4 1.2.3.4 5.6.7.8 65536 2", Malformed("bad v1 port")),
            ("TCP4 1.2.3.4 5.6.7.8 +1 2", Malformed("bad v1 port")),
            ("TCP4 1.2.3.4 5.6.7.8 1 -2", Malformed("bad v1 port")),
            ("TCP4 1.2.3.4 5.6.7.8 1 ", Malformed("bad v1 port")),
        ] {
            assert_eq!(parse(format!("PROXY {line}\r\n").as_bytes()), Err(want), "{line}");
        }
    }

    /// Random bytes and random damage to valid headers: never a panic, and a `Done` never claims
    /// more than it was given.
    #[test]
    fn no_input_panics() {
        let mut rng = fastrand::Rng::with_seed(0x9e37_79b9);
        let seeds = [
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n".to_vec(),
            v2_ipv4(TLVS),
            v2_ipv6(TLVS),
            V2_SIGNATURE.to_vec(),
        ];
        for i in 0..200_000 {
            let mut input = if i % 4 == 0 {
                (0..rng.usize(..200)).map(|_| rng.u8(..)).collect()
            } else {
                seeds[rng.usize(..seeds.len())].clone()
            };
            for _ in 0..rng.usize(..4) {
                if !input.is_empty() {
                    let at = rng.usize(..input.len());
                    input[at] = rng.u8(..);
                }
            }
            input.truncate(rng.usize(..=input.len()));
            if let Ok(Parsed::Done { header_len, .. }) = parse(&input) {
                assert!(header_len <= input.len());
            }
        }
    }

    /// Hands out one byte per read, as a slow network would.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if let Some(&b) = self.0.get(self.1) {
                buf.put_slice(&[b]);
                self.1 += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn read_header_keeps_the_bytes_past_the_header() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(4096);
        let mut sent = v2_ipv6(TLVS);
        sent.extend(b"GET / HTTP/1.1\r\n\r\n");
        client.write_all(&sent).await.unwrap();
        let mut server = server;
        let (source, rest) = read_header(&mut server, Duration::from_secs(30)).await.unwrap();
        assert_eq!(source, sa("[2001:db8::1]:12345"));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");

        // Through Rewind, the server reads the leftover first, then the stream; writes go out.
        let mut rewound = Rewind::new(server, rest);
        client.write_all(b"body").await.unwrap();
        let mut got = vec![0; 22];
        rewound.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\nbody");
        rewound.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let mut answer = vec![0; 17];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n");

        let mut slow = Trickle(b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\nGET".to_vec(), 0);
        let (source, rest) = read_header(&mut slow, Duration::from_secs(30)).await.unwrap();
        assert_eq!((source, rest), (sa("192.0.2.1:1"), Vec::new()));
    }

    #[tokio::test]
    async fn read_header_fails_on_a_silent_peer_a_closed_one_and_garbage() {
        let (client, mut server) = tokio::io::duplex(64);
        let silent = read_header(&mut server, Duration::from_millis(50)).await;
        assert_eq!(silent, Err(ProxyError::Timeout));
        drop(client);
        assert_eq!(
            read_header(&mut server, Duration::from_secs(30)).await,
            Err(ProxyError::Closed)
        );
        let mut garbage = Trickle(b"PROXY TCP4 nonsense\r\n".to_vec(), 0);
        let got = read_header(&mut garbage, Duration::from_secs(30)).await;
        assert_eq!(
            got,
            Err(Malformed(
                "v1 TCP line needs two addresses and two ports, one space apart"
            ))
        );
    }
}
