//! A cheap look at the HTTP/1 request stream on its way from the socket to hyper, for what hyper
//! cannot tell us: where each request head starts and ends (for `header_read_timeout`), how big
//! it is (`max_header_bytes`, answered with a reason rather than hyper's empty 431), and whether
//! its framing is ambiguous. hyper quietly accepts a request with both `Content-Length` and
//! `Transfer-Encoding` (it drops the length and closes after the request); a proxy must refuse
//! it, since another server on the path may pick the other framing (request smuggling).
//!
//! The scanner is a byte-at-a-time state machine that keeps a few integers and no buffer, so a
//! head or chunk-size line split across reads in any place is handled, and nothing is allocated.
//! For normal traffic it costs little: the request line and the values of uninteresting fields
//! are skipped with `memchr`-style searches for the line end, only the names' first bytes are
//! compared, and bodies of known length are skipped by arithmetic; in chunked bodies only the
//! size lines are read.
//!
//! Limits, on purpose:
//! - It is not a validator. Invalid names, values, targets or versions are left to hyper, which
//!   answers them with its own 400 (no body) and closes. The scanner only has to agree with
//!   hyper on the framing of every request hyper accepts, which it does by following the same
//!   rules (RFC 9112 §6): `Transfer-Encoding` whose last coding is `chunked`, else
//!   `Content-Length` (digits only; repeated lines must agree), else no body.
//! - Where it cannot follow the stream it stops looking (`Opaque`) and lets bytes through: after
//!   an HTTP/2 preface, after a head that asks to upgrade (`Upgrade`, or `CONNECT`: what follows
//!   may be a tunnel; the listener closes the connection when the upgrade is refused, so no
//!   unscanned request is ever served), and after a chunk size it cannot read (hyper refuses
//!   that body and closes the connection).
//! - Fields are counted like hyper counts them: more than [`MAX_FIELDS`] is refused with 431.

/// hyper's limit on the number of header fields of a request head.
pub const MAX_FIELDS: u16 = 100;

/// Why a request head was refused before hyper saw all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The head passed `max_header_bytes`.
    HeadTooLarge,
    /// More than [`MAX_FIELDS`] header fields.
    TooManyFields,
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// A `Content-Length` that is not a number, or two that disagree.
    BadContentLength,
    /// A `Transfer-Encoding` whose last coding is not `chunked`, or one in an HTTP/1.0 request.
    BadTransferEncoding,
    /// A field line starting with a space or tab (obsolete line folding).
    LineFolding,
    /// The head was not complete within `header_read_timeout` (decided by the guard's timer).
    HeadTimeout,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::HeadTooLarge | Refusal::TooManyFields => 431,
            Refusal::HeadTimeout => 408,
            Refusal::LengthAndChunked
            | Refusal::BadContentLength
            | Refusal::BadTransferEncoding
            | Refusal::LineFolding => 400,
        }
    }

    /// The status line's reason phrase.
    pub fn reason_phrase(self) -> &'static str {
        match self.status() {
            431 => "Request Header Fields Too Large",
            408 => "Request Timeout",
            _ => "Bad Request",
        }
    }

    /// The one-line body that tells the client why.
    pub fn body(self) -> &'static str {
        match self {
            Refusal::HeadTooLarge => "431 request head too large\n",
            Refusal::TooManyFields => "431 too many header fields\n",
            Refusal::HeadTimeout => "408 request head not received in time\n",
            Refusal::LengthAndChunked => "400 both Content-Length and Transfer-Encoding\n",
            Refusal::BadContentLength => "400 invalid or conflicting Content-Length\n",
            Refusal::BadTransferEncoding => "400 unsupported Transfer-Encoding\n",
            Refusal::LineFolding => "400 obsolete line folding\n",
        }
    }

    /// The `reason` label of `waypost_client_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::HeadTooLarge | Refusal::TooManyFields => "header_too_large",
            Refusal::HeadTimeout => "header_timeout",
            Refusal::LengthAndChunked
            | Refusal::BadContentLength
            | Refusal::BadTransferEncoding
            | Refusal::LineFolding => "bad_framing",
        }
    }
}

/// Header fields the scanner reads the values of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ContentLength,
    TransferEncoding,
    Upgrade,
}

impl Field {
    fn name(self) -> &'static [u8] {
        match self {
            Field::ContentLength => b"content-length",
            Field::TransferEncoding => b"transfer-encoding",
            Field::Upgrade => b"upgrade",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line.
    Start,
    /// A CR at the start of a line: an empty line if LF follows.
    StartCr,
    /// In the request line: bytes of `CONNECT ` matched so far (9: not CONNECT).
    Request { method: u8 },
    /// In a field name that may be one of interest: how many bytes of it matched.
    Name { field: Field, matched: u8 },
    /// In the value of a field of interest.
    Value(Field),
    /// Anything else: skip to the end of the line.
    Skip,
}

/// `Content-Length` value state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digits {
    Before,
    In,
    After,
    Bad,
}

/// The head being read.
#[derive(Debug, Clone, Copy)]
struct Head {
    /// The request line has begun (empty lines before it are not part of the head).
    started: bool,
    /// Bytes from the start of the request line.
    bytes: usize,
    fields: u16,
    line: Line,
    request_line_done: bool,
    /// The last 8 bytes of the request line (its version), CR left out.
    tail: u64,
    connect: bool,
    upgrade: bool,
    /// A `Content-Length` was seen, with this value (None: invalid or disagreeing).
    length: Option<Option<u64>>,
    /// The value being read.
    digits: Digits,
    value: u64,
    transfer_encoding: bool,
    /// Whether the last `Transfer-Encoding` line's last coding is `chunked`.
    chunked: bool,
    /// The last coding of the value being read, lower-cased, if it fits 8 bytes.
    coding: [u8; 8],
    coding_len: u8,
    /// The coding is over (whitespace after it), or too long or odd to be `chunked`.
    coding_done: bool,
    coding_bad: bool,
}

impl Head {
    const fn new() -> Head {
        Head {
            started: false,
            bytes: 0,
            fields: 0,
            line: Line::Start,
            request_line_done: false,
            tail: 0,
            connect: false,
            upgrade: false,
            length: None,
            digits: Digits::Before,
            value: 0,
            transfer_encoding: false,
            chunked: false,
            coding: [0; 8],
            coding_len: 0,
            coding_done: false,
            coding_bad: false,
        }
    }

    fn value_byte(&mut self, field: Field, b: u8) {
        match field {
            Field::ContentLength => {
                self.digits = match (self.digits, b) {
                    (Digits::Before | Digits::In, b'0'..=b'9') => {
                        match self
                            .value
                            .checked_mul(10)
                            .and_then(|v| v.checked_add(u64::from(b - b'0')))
                        {
                            Some(v) => {
                                self.value = v;
                                Digits::In
                            }
                            None => Digits::Bad,
                        }
                    }
                    (Digits::Before, b' ' | b'\t' | b'\r') => Digits::Before,
                    (Digits::In | Digits::After, b' ' | b'\t' | b'\r') => Digits::After,
                    _ => Digits::Bad,
                };
            }
            Field::TransferEncoding => match b {
                b',' => {
                    self.coding_len = 0;
                    self.coding_done = false;
                    self.coding_bad = false;
                }
                b' ' | b'\t' | b'\r' => self.coding_done = self.coding_len > 0,
                _ if self.coding_done || self.coding_len as usize == self.coding.len() => self.coding_bad = true,
                _ => {
                    self.coding[self.coding_len as usize] = b | 0x20;
                    self.coding_len += 1;
                }
            },
            Field::Upgrade => {}
        }
    }

    fn end_of_value(&mut self, field: Field) -> Result<(), Refusal> {
        match field {
            Field::ContentLength => {
                let v = match self.digits {
                    Digits::In | Digits::After => Some(self.value),
                    Digits::Before | Digits::Bad => None,
                };
                // Repeated lines must agree (hyper's rule); None marks a bad one.
                self.length = Some(match self.length {
                    None => v,
                    Some(prev) if prev == v => v,
                    Some(_) => None,
                });
                if self.length == Some(None) {
                    return Err(Refusal::BadContentLength);
                }
            }
            Field::TransferEncoding => {
                self.transfer_encoding = true;
                self.chunked = !self.coding_bad && &self.coding[..self.coding_len as usize] == b"chunked";
            }
            Field::Upgrade => self.upgrade = true,
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` seen so far.
    Size {
        size: u64,
        digits: bool,
    },
    /// After the size: extensions or whitespace up to the line end.
    SizeRest {
        size: u64,
    },
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk; `empty`: nothing on the current line yet.
    Trailer {
        empty: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Fixed(u64),
    Chunked(Chunk),
    Opaque,
}

/// Why the scanner stopped looking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opaque {
    /// An HTTP/2 connection (the preface's request line).
    Http2,
    /// A head that asked to upgrade (or CONNECT).
    Upgrade,
    /// A body the scanner could not follow.
    Lost,
}

/// Follows the request stream of one HTTP/1 connection.
#[derive(Debug, Clone)]
pub struct Scanner {
    max_head: usize,
    phase: Phase,
    head: Head,
    opaque: Option<Opaque>,
    /// Complete heads seen (saturating).
    heads: u32,
}

/// First bytes of a field line that need a closer look: the names read (any case), line
/// folding, and the line ends of an empty line.
const LINE_OF_INTEREST: [bool; 256] = {
    let mut t = [false; 256];
    let bytes = b"cCtTuU \t\r\n";
    let mut k = 0;
    while k < bytes.len() {
        t[bytes[k] as usize] = true;
        k += 1;
    }
    t
};

const HTTP10: u64 = u64::from_be_bytes(*b"HTTP/1.0");
const HTTP20: u64 = u64::from_be_bytes(*b"HTTP/2.0");

fn find_lf(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}

impl Scanner {
    pub fn new(max_head: usize) -> Scanner {
        Scanner {
            max_head,
            phase: Phase::Head,
            head: Head::new(),
            opaque: None,
            heads: 0,
        }
    }

    /// How many complete request heads went by.
    pub fn heads(&self) -> u32 {
        self.heads
    }

    /// Part of a request head has arrived, but not its end.
    pub fn in_head(&self) -> bool {
        self.phase == Phase::Head && self.head.started
    }

    /// Whether the scanner stopped following the stream, and why.
    pub fn opaque(&self) -> Option<Opaque> {
        self.opaque
    }

    fn stop(&mut self, why: Opaque) {
        self.phase = Phase::Opaque;
        self.opaque = Some(why);
    }

    /// Look at bytes just read. `Err((at, why))`: the request starting before `at` is refused;
    /// bytes from `at` on must not reach hyper.
    pub fn feed(&mut self, buf: &[u8]) -> Result<(), (usize, Refusal)> {
        let mut i = 0;
        while i < buf.len() {
            match self.phase {
                Phase::Opaque => return Ok(()),
                Phase::Fixed(left) => {
                    let n = (buf.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += n;
                    let left = left - n as u64;
                    self.phase = if left == 0 { Phase::Head } else { Phase::Fixed(left) };
                }
                Phase::Chunked(c) => i = self.chunked(c, buf, i),
                Phase::Head => i = self.head(buf, i)?,
            }
        }
        Ok(())
    }

    fn chunked(&mut self, c: Chunk, buf: &[u8], mut i: usize) -> usize {
        let next = match c {
            Chunk::Size { mut size, mut digits } => {
                let mut next = None;
                while i < buf.len() {
                    let b = buf[i];
                    let d = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        _ => {
                            next = Some(if digits {
                                Chunk::SizeRest { size }
                            } else {
                                // hyper refuses a size line without a size.
                                self.stop(Opaque::Lost);
                                return buf.len();
                            });
                            break;
                        }
                    };
                    let Some(s) = size.checked_mul(16).and_then(|s| s.checked_add(u64::from(d))) else {
                        self.stop(Opaque::Lost);
                        return buf.len();
                    };
                    size = s;
                    digits = true;
                    i += 1;
                }
                next.unwrap_or(Chunk::Size { size, digits })
            }
            Chunk::SizeRest { size } => match find_lf(&buf[i..]) {
                None => {
                    i = buf.len();
                    c
                }
                Some(p) => {
                    i += p + 1;
                    if size == 0 {
                        Chunk::Trailer { empty: true }
                    } else {
                        Chunk::Data(size)
                    }
                }
            },
            Chunk::Data(left) => {
                let n = (buf.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                i += n;
                let left = left - n as u64;
                if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                }
            }
            Chunk::DataEnd => match find_lf(&buf[i..]) {
                None => {
                    i = buf.len();
                    c
                }
                Some(p) => {
                    i += p + 1;
                    Chunk::Size { size: 0, digits: false }
                }
            },
            Chunk::Trailer { mut empty } => {
                let mut done = false;
                while i < buf.len() {
                    let b = buf[i];
                    i += 1;
                    match b {
                        b'\n' if empty => {
                            done = true;
                            break;
                        }
                        b'\n' => empty = true,
                        b'\r' => {}
                        _ => {
                            empty = false;
                            match find_lf(&buf[i..]) {
                                Some(p) => i += p,
                                None => i = buf.len(),
                            }
                        }
                    }
                }
                if done {
                    self.phase = Phase::Head;
                    self.head = Head::new();
                    return i;
                }
                Chunk::Trailer { empty }
            }
        };
        self.phase = Phase::Chunked(next);
        i
    }

    /// Read head bytes from `i`; returns where it stopped (after the end of the head, or at the
    /// end of `buf`). A refusal points at a byte before the head's end, so hyper never gets a
    /// whole refused head.
    fn head(&mut self, buf: &[u8], mut i: usize) -> Result<usize, (usize, Refusal)> {
        while i < buf.len() {
            if self.head.line == Line::Start && self.head.request_line_done {
                i = self.plain_fields(buf, i)?;
                if i == buf.len() {
                    break;
                }
            }
            let at = i;
            // The common case: a whole line in this read, looked at once; a line split across
            // reads goes a byte (or a run) at a time.
            let whole = match self.head.line {
                Line::Start => find_lf(&buf[i..]),
                _ => None,
            };
            let step = match whole {
                Some(p) => {
                    i += p + 1;
                    self.head_line(&buf[at..at + p])
                }
                None => self.head_step(buf, &mut i),
            };
            if self.phase != Phase::Head {
                return Ok(i);
            }
            if self.head.started {
                self.head.bytes += i - at;
            }
            match step {
                Err(why) => return Err((at, why)),
                Ok(done) => {
                    if self.head.bytes > self.max_head {
                        return Err((at, Refusal::HeadTooLarge));
                    }
                    if done {
                        // The head's last byte is `i - 1`: refuse before it.
                        return match self.end_of_head() {
                            Ok(()) => Ok(i),
                            Err(why) => Err((i - 1, why)),
                        };
                    }
                }
            }
        }
        Ok(i)
    }

    /// The hot loop: field lines that lie whole in this read and whose first byte says they
    /// are of no interest (most of them) are counted and skipped with one search each. Returns
    /// where a line of interest, an empty line or a split line starts.
    fn plain_fields(&mut self, buf: &[u8], mut i: usize) -> Result<usize, (usize, Refusal)> {
        let h = &mut self.head;
        while let Some(&first) = buf.get(i) {
            if LINE_OF_INTEREST[first as usize] {
                break;
            }
            let Some(p) = find_lf(&buf[i + 1..]) else { break };
            let end = i + p + 2;
            h.fields += 1;
            h.bytes += end - i;
            if h.fields > MAX_FIELDS {
                return Err((i, Refusal::TooManyFields));
            }
            if h.bytes > self.max_head {
                return Err((i, Refusal::HeadTooLarge));
            }
            i = end;
        }
        Ok(i)
    }

    /// A whole line of the head (its LF left out), as `head_step` would take it byte by byte.
    /// `Ok(true)`: the empty line that ends the head.
    fn head_line(&mut self, line: &[u8]) -> Result<bool, Refusal> {
        let h = &mut self.head;
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(&first) = text.first() else {
            // An empty line before the request line is skipped, as hyper does.
            return Ok(h.request_line_done);
        };
        if !h.request_line_done {
            h.started = true;
            h.connect = text.starts_with(b"CONNECT ");
            track_tail(&mut h.tail, text);
            h.request_line_done = true;
            if h.tail == HTTP20 {
                self.stop(Opaque::Http2);
            }
            return Ok(false);
        }
        match first {
            b' ' | b'\t' => return Err(Refusal::LineFolding),
            // A CR alone is not HTTP; hyper refuses it.
            b'\r' => return Ok(false),
            _ => {}
        }
        h.fields += 1;
        if h.fields > MAX_FIELDS {
            return Err(Refusal::TooManyFields);
        }
        let field = match first | 0x20 {
            b'c' => Field::ContentLength,
            b't' => Field::TransferEncoding,
            b'u' => Field::Upgrade,
            _ => return Ok(false),
        };
        let name = field.name();
        let named = line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].iter().zip(name).all(|(b, n)| b | 0x20 == *n);
        if !named {
            return Ok(false);
        }
        h.digits = Digits::Before;
        h.value = 0;
        h.coding_len = 0;
        h.coding_done = false;
        h.coding_bad = false;
        if field != Field::Upgrade {
            for &b in &line[name.len() + 1..] {
                h.value_byte(field, b);
            }
        }
        h.end_of_value(field).map(|()| false)
    }

    /// One step through the head: a byte, or a run to the end of a line. `Ok(true)`: the head
    /// ended at `i - 1`.
    fn head_step(&mut self, buf: &[u8], i: &mut usize) -> Result<bool, Refusal> {
        let h = &mut self.head;
        let b = buf[*i];
        match h.line {
            Line::Start | Line::StartCr => match b {
                b'\r' if h.line == Line::Start => {
                    h.line = Line::StartCr;
                    *i += 1;
                }
                b'\n' => {
                    *i += 1;
                    h.line = Line::Start;
                    // An empty line before the request line is skipped, as hyper does.
                    return Ok(h.request_line_done);
                }
                // A CR alone is not HTTP; hyper refuses it. Skip the line.
                _ if h.line == Line::StartCr => h.line = Line::Skip,
                b' ' | b'\t' if h.request_line_done => return Err(Refusal::LineFolding),
                _ if !h.request_line_done => {
                    h.started = true;
                    h.line = Line::Request { method: 0 };
                }
                _ => {
                    h.fields += 1;
                    if h.fields > MAX_FIELDS {
                        return Err(Refusal::TooManyFields);
                    }
                    h.line = match b | 0x20 {
                        b'c' => Line::Name {
                            field: Field::ContentLength,
                            matched: 1,
                        },
                        b't' => Line::Name {
                            field: Field::TransferEncoding,
                            matched: 1,
                        },
                        b'u' => Line::Name {
                            field: Field::Upgrade,
                            matched: 1,
                        },
                        _ => Line::Skip,
                    };
                    *i += 1;
                }
            },
            Line::Request { method } if method < 8 && b != b'\n' => {
                // The method, a byte at a time, only as far as telling CONNECT apart.
                let method = if b == b"CONNECT "[method as usize] {
                    method + 1
                } else {
                    9
                };
                if method == 8 {
                    h.connect = true;
                }
                h.line = Line::Request { method };
                track_tail(&mut h.tail, &buf[*i..*i + 1]);
                *i += 1;
            }
            Line::Request { .. } => {
                let rest = &buf[*i..];
                match find_lf(rest) {
                    None => {
                        track_tail(&mut h.tail, rest);
                        *i = buf.len();
                    }
                    Some(p) => {
                        track_tail(&mut h.tail, &rest[..p]);
                        *i += p + 1;
                        h.request_line_done = true;
                        h.line = Line::Start;
                        if h.tail == HTTP20 {
                            self.stop(Opaque::Http2);
                        }
                    }
                }
            }
            Line::Name { field, matched } => {
                let name = field.name();
                *i += 1;
                h.line = if matched as usize == name.len() {
                    match b {
                        b':' => {
                            h.digits = Digits::Before;
                            h.value = 0;
                            h.coding_len = 0;
                            h.coding_done = false;
                            h.coding_bad = false;
                            Line::Value(field)
                        }
                        b'\n' => Line::Start,
                        _ => Line::Skip,
                    }
                } else if b | 0x20 == name[matched as usize] {
                    Line::Name {
                        field,
                        matched: matched + 1,
                    }
                } else if b == b'\n' {
                    Line::Start
                } else {
                    Line::Skip
                };
            }
            Line::Value(field) => {
                *i += 1;
                if b == b'\n' {
                    h.line = Line::Start;
                    return h.end_of_value(field).map(|()| false);
                }
                h.value_byte(field, b);
            }
            Line::Skip => match find_lf(&buf[*i..]) {
                None => *i = buf.len(),
                Some(p) => {
                    *i += p + 1;
                    h.line = Line::Start;
                }
            },
        }
        Ok(false)
    }

    /// The empty line after the fields: decide the framing of what follows.
    fn end_of_head(&mut self) -> Result<(), Refusal> {
        let h = self.head;
        if h.transfer_encoding && h.length.is_some() {
            return Err(Refusal::LengthAndChunked);
        }
        if h.transfer_encoding && (!h.chunked || h.tail == HTTP10) {
            return Err(Refusal::BadTransferEncoding);
        }
        self.head = Head::new();
        self.heads = self.heads.saturating_add(1);
        if (h.upgrade && h.tail != HTTP10) || h.connect {
            self.stop(Opaque::Upgrade);
            return Ok(());
        }
        self.phase = if h.transfer_encoding {
            Phase::Chunked(Chunk::Size { size: 0, digits: false })
        } else {
            match h.length {
                Some(Some(n)) if n > 0 => Phase::Fixed(n),
                _ => Phase::Head,
            }
        };
        Ok(())
    }
}

/// Keep the last 8 bytes of a line (CR left out) in `tail`.
fn track_tail(tail: &mut u64, bytes: &[u8]) {
    let from = bytes.len().saturating_sub(9);
    for &b in &bytes[from..] {
        if b != b'\r' {
            *tail = (*tail << 8) | u64::from(b);
        }
    }
}

#[cfg(test)]
mod tests;
