//! Signed cookies for sticky sessions and read-your-writes (HMAC-SHA256 with the [session] key).
//!
//! A cookie carries its own proof, so any instance holding the same secret honours a cookie
//! another one set, with no shared session store. The value is base64url (no padding) of
//!
//! ```text
//! version (1) | purpose (1) | fields, masked (16 sticky, 8 read-your-writes) | tag (16)
//! tag    = HMAC-SHA256(mac key, version | purpose | fields in clear), first 16 bytes
//! masked = fields XOR HMAC-SHA256(mask key, tag)
//! ```
//!
//! The purpose byte is under the tag, so a sticky cookie can never be replayed as a
//! read-your-writes one. The fields are masked (the SIV construction: a deterministic cipher
//! keyed by the tag) because a backend id is an unkeyed hash of pool name and address, which a
//! client could otherwise test guessed addresses against; masked, the value reveals nothing.
//! The two keys are HMACs of the secret under fixed labels, independent of each other. A tag
//! of 128 bits is far beyond online guessing; the comparison is constant-time anyway.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted secret: 256 bits, the HMAC-SHA256 output size.
pub const MIN_SECRET_LEN: usize = 32;
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Longest decoded value: version, purpose, 16 bytes of fields, tag.
const MAX_LEN: usize = 2 + 16 + TAG_LEN;
/// Longest encoded value (46 for 34 bytes); anything longer is rejected before decoding.
const MAX_ENCODED: usize = (MAX_LEN * 4).div_ceil(3);

/// The [session] key. Cloning is cheap enough for per-generation copies; the secret itself is
/// not kept, only the two keyed HMAC states derived from it, and it is never printed.
#[derive(Clone)]
pub struct SessionKey {
    mac: HmacSha256,
    mask: HmacSha256,
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(redacted)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the session secret has {0} bytes; at least {MIN_SECRET_LEN} are needed")]
    TooShort(usize),
    #[error("cannot read the session secret file {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// Why a cookie was not honoured; the request then gets a fresh pick (and a new cookie).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("malformed cookie")]
    Malformed,
    #[error("cookie signature does not match")]
    BadSignature,
    #[error("cookie expired")]
    Expired,
    #[error("cookie made for another purpose")]
    WrongPurpose,
}

impl CookieError {
    /// A stable lower-case name, for metric labels and log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            CookieError::Malformed => "malformed",
            CookieError::BadSignature => "bad_signature",
            CookieError::Expired => "expired",
            CookieError::WrongPurpose => "wrong_purpose",
        }
    }
}

/// What a cookie is for; part of the signed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Sticky,
    ReadYourWrites,
}

impl Purpose {
    fn byte(self) -> u8 {
        match self {
            Purpose::Sticky => 1,
            Purpose::ReadYourWrites => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Purpose> {
        match b {
            1 => Some(Purpose::Sticky),
            2 => Some(Purpose::ReadYourWrites),
            _ => None,
        }
    }

    fn fields_len(self) -> usize {
        match self {
            Purpose::Sticky => 16,
            Purpose::ReadYourWrites => 8,
        }
    }
}

/// The fields a cookie carries. Expiry is unix seconds, checked when opening, so a copied
/// cookie stops working at its expiry whatever the client does with Max-Age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Pinned to the backend with this stable id (see `balancer::hash::backend_id`).
    Sticky { backend: u64, expires: u64 },
    /// Reads go to the primary until then.
    ReadYourWrites { expires: u64 },
}

impl Claim {
    pub fn purpose(&self) -> Purpose {
        match self {
            Claim::Sticky { .. } => Purpose::Sticky,
            Claim::ReadYourWrites { .. } => Purpose::ReadYourWrites,
        }
    }

    pub fn expires(&self) -> u64 {
        match *self {
            Claim::Sticky { expires, .. } | Claim::ReadYourWrites { expires } => expires,
        }
    }
}

impl SessionKey {
    /// A key from the secret's bytes exactly as given (a file's trailing newline included:
    /// instances sharing the file share it too).
    pub fn from_secret(secret: &[u8]) -> Result<SessionKey, KeyError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::TooShort(secret.len()));
        }
        Ok(SessionKey::derive(secret))
    }

    /// A key from the [session] secret_file.
    pub fn from_file(path: &Path) -> Result<SessionKey, KeyError> {
        let secret = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        SessionKey::from_secret(&secret)
    }

    /// A key for this process only (no secret_file): cookies survive reloads but not a restart,
    /// and other instances do not honour them. From /dev/urandom; fastrand if that is missing.
    pub fn random() -> SessionKey {
        let mut secret = [0u8; 32];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret));
        if read.is_err() {
            fastrand::fill(&mut secret);
        }
        SessionKey::derive(&secret)
    }

    fn derive(secret: &[u8]) -> SessionKey {
        let sub = |label: &[u8]| {
            let mut m = keyed(secret);
            m.update(label);
            keyed(&m.finalize().into_bytes())
        };
        SessionKey {
            mac: sub(b"waypost cookie tag v1"),
            mask: sub(b"waypost cookie mask v1"),
        }
    }

    /// A 16-byte key for another use of the same secret (the rate-limit key hash), derived
    /// under `label`: instances sharing the secret derive the same key, nobody else can.
    pub fn derive_key(&self, label: &[u8]) -> [u8; 16] {
        let mut m = self.mac.clone();
        m.update(b"waypost derived key v1 ");
        m.update(label);
        let out = m.finalize().into_bytes();
        let mut k = [0u8; 16];
        k.copy_from_slice(&out[..16]);
        k
    }

    /// The cookie value for a claim: opaque, URL- and cookie-safe, 46 characters for a sticky
    /// claim and 35 for read-your-writes.
    pub fn seal(&self, claim: Claim) -> String {
        let mut buf = [0u8; MAX_LEN];
        buf[0] = VERSION;
        buf[1] = claim.purpose().byte();
        let len = 2 + claim.purpose().fields_len();
        match claim {
            Claim::Sticky { backend, expires } => {
                buf[2..10].copy_from_slice(&backend.to_be_bytes());
                buf[10..18].copy_from_slice(&expires.to_be_bytes());
            }
            Claim::ReadYourWrites { expires } => buf[2..10].copy_from_slice(&expires.to_be_bytes()),
        }
        let tag = self.tag(&buf[..len]);
        self.apply_mask(&tag, &mut buf[2..len]);
        buf[len..len + TAG_LEN].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(&buf[..len + TAG_LEN])
    }

    /// Check a cookie value made for `purpose` and still valid at `now_unix`. The signature is
    /// checked before anything the value claims is believed, its purpose before its expiry.
    pub fn open(&self, purpose: Purpose, value: &str, now_unix: u64) -> Result<Claim, CookieError> {
        if value.len() > MAX_ENCODED {
            return Err(CookieError::Malformed);
        }
        let mut buf = [0u8; MAX_ENCODED];
        let n = URL_SAFE_NO_PAD
            .decode_slice(value, &mut buf)
            .map_err(|_| CookieError::Malformed)?;
        if n < 2 || buf[0] != VERSION {
            return Err(CookieError::Malformed);
        }
        let made_for = Purpose::from_byte(buf[1]).ok_or(CookieError::Malformed)?;
        let len = 2 + made_for.fields_len();
        if n != len + TAG_LEN {
            return Err(CookieError::Malformed);
        }
        let (head, tag) = buf[..n].split_at_mut(len);
        self.apply_mask(tag, &mut head[2..]);
        if !bool::from(self.tag(head)[..].ct_eq(tag)) {
            return Err(CookieError::BadSignature);
        }
        if made_for != purpose {
            return Err(CookieError::WrongPurpose);
        }
        let field = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&head[2 + 8 * i..10 + 8 * i]);
            u64::from_be_bytes(w)
        };
        let claim = match made_for {
            Purpose::Sticky => Claim::Sticky {
                backend: field(0),
                expires: field(1),
            },
            Purpose::ReadYourWrites => Claim::ReadYourWrites { expires: field(0) },
        };
        if now_unix >= claim.expires() {
            return Err(CookieError::Expired);
        }
        Ok(claim)
    }

    pub fn seal_sticky(&self, backend: u64, expires: u64) -> String {
        self.seal(Claim::Sticky { backend, expires })
    }

    /// The pinned backend's stable id.
    pub fn open_sticky(&self, value: &str, now_unix: u64) -> Result<u64, CookieError> {
        match self.open(Purpose::Sticky, value, now_unix)? {
            Claim::Sticky { backend, .. } => Ok(backend),
            Claim::ReadYourWrites { .. } => Err(CookieError::WrongPurpose),
        }
    }

    pub fn seal_read_your_writes(&self, expires: u64) -> String {
        self.seal(Claim::ReadYourWrites { expires })
    }

    /// The expiry of a valid read-your-writes cookie.
    pub fn open_read_your_writes(&self, value: &str, now_unix: u64) -> Result<u64, CookieError> {
        self.open(Purpose::ReadYourWrites, value, now_unix).map(|c| c.expires())
    }

    fn tag(&self, bytes: &[u8]) -> [u8; TAG_LEN] {
        let mut m = self.mac.clone();
        m.update(bytes);
        let full = m.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    fn apply_mask(&self, tag: &[u8], fields: &mut [u8]) {
        let mut m = self.mask.clone();
        m.update(tag);
        for (f, k) in fields.iter_mut().zip(m.finalize().into_bytes()) {
            *f ^= k;
        }
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed first), so this cannot fail.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// The value of cookie `name` in one Cookie header value (`a=1; b="2"`), quotes removed.
/// Names match exactly (they are case-sensitive); the first occurrence wins, as the most
/// specific path comes first from browsers.
pub fn cookie_value<'a>(header_value: &'a str, name: &str) -> Option<&'a str> {
    header_value.split(';').find_map(|pair| {
        let (n, v) = pair.split_once('=')?;
        if n.trim_matches([' ', '\t']) != name {
            return None;
        }
        let v = v.trim_matches([' ', '\t']);
        Some(v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v))
    })
}

/// [`cookie_value`] over every Cookie header of a request: HTTP/2 clients may send one header
/// per cookie.
pub fn find_cookie<'a>(header_values: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    header_values.into_iter().find_map(|h| cookie_value(h, name))
}

/// A Set-Cookie header value. HttpOnly because scripts have no use for it, SameSite=Lax so it
/// still comes with top-level navigations from other sites, Secure on TLS listeners. `name`
/// comes from validated config and `value` from [`SessionKey::seal`], so neither needs quoting.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn key(fill: u8) -> SessionKey {
        SessionKey::from_secret(&[fill; 32]).unwrap()
    }

    #[test]
    fn sealed_claims_open_to_themselves() {
        let k = key(1);
        let sticky = k.seal_sticky(0xdead_beef_0123_4567, NOW + 3600);
        assert_eq!(sticky.len(), 46);
        assert_eq!(k.open_sticky(&sticky, NOW), Ok(0xdead_beef_0123_4567));
        let ryw = k.seal_read_your_writes(NOW + 5);
        assert_eq!(ryw.len(), 35);
        assert_eq!(k.open_read_your_writes(&ryw, NOW + 4), Ok(NOW + 5));
        let claim = Claim::Sticky {
            backend: 7,
            expires: u64::MAX,
        };
        assert_eq!(k.open(Purpose::Sticky, &k.seal(claim), NOW), Ok(claim));
    }

    #[test]
    fn values_are_opaque_and_cookie_safe() {
        let k = key(1);
        let id: u64 = 0x1122_3344_5566_7788;
        let v = k.seal_sticky(id, NOW + 60);
        assert!(
            v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{v}"
        );
        let raw = URL_SAFE_NO_PAD.decode(&v).unwrap();
        let shows = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
        assert!(!shows(&id.to_be_bytes()) && !shows(&id.to_le_bytes()));
        assert!(!shows(&(NOW + 60).to_be_bytes()));
        // Two backends with the same expiry do not share masked bytes.
        let other = URL_SAFE_NO_PAD.decode(k.seal_sticky(id ^ 1, NOW + 60)).unwrap();
        assert_ne!(raw[2..18], other[2..18]);
    }

    #[test]
    fn any_tampered_character_or_bit_is_refused() {
        let k = key(1);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for v in [k.seal_sticky(42, NOW + 60), k.seal_read_your_writes(NOW + 60)] {
            for i in 0..v.len() {
                for &c in alphabet.iter().filter(|&&c| c != v.as_bytes()[i]) {
                    let mut t = v.clone().into_bytes();
                    t[i] = c;
                    let t = String::from_utf8(t).unwrap();
                    for p in [Purpose::Sticky, Purpose::ReadYourWrites] {
                        let e = k.open(p, &t, NOW).unwrap_err();
                        assert!(matches!(e, CookieError::BadSignature | CookieError::Malformed), "{e:?}");
                    }
                }
            }
            let raw = URL_SAFE_NO_PAD.decode(&v).unwrap();
            for bit in 0..raw.len() * 8 {
                let mut t = raw.clone();
                t[bit / 8] ^= 1 << (bit % 8);
                let e = k.open(Purpose::Sticky, &URL_SAFE_NO_PAD.encode(&t), NOW).unwrap_err();
                assert!(matches!(e, CookieError::BadSignature | CookieError::Malformed), "{e:?}");
            }
            assert_eq!(
                k.open(Purpose::Sticky, &v[..v.len() - 1], NOW).unwrap_err(),
                CookieError::Malformed
            );
            assert_eq!(
                k.open(Purpose::Sticky, &format!("{v}A"), NOW).unwrap_err(),
                CookieError::Malformed
            );
        }
    }

    #[test]
    fn expired_cookies_are_refused() {
        let k = key(1);
        let v = k.seal_sticky(1, NOW);
        assert_eq!(k.open_sticky(&v, NOW - 1), Ok(1));
        assert_eq!(k.open_sticky(&v, NOW), Err(CookieError::Expired));
        let r = k.seal_read_your_writes(NOW);
        assert_eq!(k.open_read_your_writes(&r, NOW + 10), Err(CookieError::Expired));
    }

    #[test]
    fn a_cookie_is_only_good_for_its_purpose() {
        let k = key(1);
        let sticky = k.seal_sticky(1, NOW + 60);
        let ryw = k.seal_read_your_writes(NOW + 60);
        assert_eq!(k.open_read_your_writes(&sticky, NOW), Err(CookieError::WrongPurpose));
        assert_eq!(k.open_sticky(&ryw, NOW), Err(CookieError::WrongPurpose));
    }

    #[test]
    fn instances_with_one_secret_agree_and_other_secrets_do_not() {
        let secret: Vec<u8> = (0..40).collect();
        let (a, b) = (
            SessionKey::from_secret(&secret).unwrap(),
            SessionKey::from_secret(&secret).unwrap(),
        );
        let v = a.seal_sticky(9, NOW + 60);
        assert_eq!(b.open_sticky(&v, NOW), Ok(9));
        assert_eq!(b.seal_sticky(9, NOW + 60), v);
        let mut other = secret.clone();
        other[39] ^= 1;
        let c = SessionKey::from_secret(&other).unwrap();
        assert_eq!(c.open_sticky(&v, NOW), Err(CookieError::BadSignature));
        let r = SessionKey::random();
        assert_eq!(r.open_sticky(&v, NOW), Err(CookieError::BadSignature));
        assert_eq!(
            SessionKey::random().open_sticky(&r.seal_sticky(9, NOW + 60), NOW),
            Err(CookieError::BadSignature)
        );
    }

    #[test]
    fn short_secrets_are_refused_and_keys_never_print() {
        assert!(matches!(SessionKey::from_secret(&[1; 31]), Err(KeyError::TooShort(31))));
        assert_eq!(format!("{:?}", key(0x41)), "SessionKey(redacted)");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.key");
        std::fs::write(&path, [5u8; 32]).unwrap();
        let v = key(5).seal_read_your_writes(NOW + 1);
        assert_eq!(
            SessionKey::from_file(&path).unwrap().open_read_your_writes(&v, NOW),
            Ok(NOW + 1)
        );
        assert!(SessionKey::from_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let k = key(1);
        let mut rng = fastrand::Rng::with_seed(3);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ ;\"";
        for round in 0..20_000 {
            let len = rng.usize(..80);
            let s = if round % 2 == 0 {
                let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                (0..len)
                    .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
                    .collect()
            };
            for p in [Purpose::Sticky, Purpose::ReadYourWrites] {
                assert!(k.open(p, &s, NOW).is_err());
            }
            let _ = cookie_value(&s, "a");
        }
        // Right length and version, random rest: only the tag can refuse it.
        for _ in 0..2_000 {
            let mut raw = [0u8; 34];
            rng.fill(&mut raw);
            (raw[0], raw[1]) = (VERSION, 1);
            let e = k.open(Purpose::Sticky, &URL_SAFE_NO_PAD.encode(raw), NOW).unwrap_err();
            assert_eq!(e, CookieError::BadSignature);
        }
    }

    #[test]
    fn cookie_header_parsing() {
        let h = "theme=dark; waypost_affinity=abc-_1; other=\"q v\"";
        assert_eq!(cookie_value(h, "waypost_affinity"), Some("abc-_1"));
        assert_eq!(cookie_value(h, "other"), Some("q v"));
        assert_eq!(cookie_value(h, "theme"), Some("dark"));
        assert_eq!(cookie_value("a=1;b=2", "b"), Some("2"));
        assert_eq!(cookie_value(" a = \"x\" ;", "a"), Some("x"));
        assert_eq!(cookie_value("a=", "a"), Some(""));
        assert_eq!(cookie_value("a=1; a=2", "a"), Some("1"));
        assert_eq!(cookie_value("xa=1; ax=2; A=3", "a"), None);
        assert_eq!(cookie_value("a; b", "a"), None);
        assert_eq!(cookie_value("a=\"x", "a"), Some("\"x"));
        assert_eq!(cookie_value("", "a"), None);
        assert_eq!(find_cookie(["x=1", "a=2; y=3"], "y"), Some("3"));
        assert_eq!(find_cookie(Vec::<&str>::new(), "y"), None);
    }

    #[test]
    fn set_cookie_carries_the_attributes() {
        assert_eq!(
            set_cookie("waypost_affinity", "v", 3600, false),
            "waypost_affinity=v; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            set_cookie("w", "v", 5, true),
            "w=v; Path=/; Max-Age=5; HttpOnly; SameSite=Lax; Secure"
        );
    }
}
