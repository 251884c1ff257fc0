//! `GET /` on the admin address: the live status page. One HTML file built into the binary,
//! with its style and script inline and nothing loaded from elsewhere; the script polls
//! `GET /status` (with the bearer token from the page's login form, kept in sessionStorage and
//! sent in the Authorization header, never in a URL) and draws what it answers. The
//! Content-Security-Policy allows exactly that inline style and script (by their SHA-256) and
//! fetches from this origin.

use std::sync::OnceLock;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};

pub const HTML: &str = include_str!("page.html");

/// The text between the first `<tag>` and `</tag>` of the page.
fn inline(tag: &str) -> &'static str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = HTML.find(&open).map(|i| i + open.len()).unwrap_or(0);
    let end = HTML[start..].find(&close).map(|i| start + i).unwrap_or(start);
    &HTML[start..end]
}

fn hash(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s.as_bytes()))
}

/// The page's Content-Security-Policy, computed once.
pub fn csp() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        let v = format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; connect-src 'self'; \
             img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(inline("script")),
            hash(inline("style")),
        );
        HeaderValue::from_str(&v).expect("ASCII header value")
    })
}

/// The marker the page reads to know whether `/status` needs a token.
const AUTH_NONE: &str = r#"<meta name="waypost-auth" content="none">"#;
const AUTH_BEARER: &str = r#"<meta name="waypost-auth" content="bearer">"#;

/// The page, telling its script whether a token is needed (so that it asks for one before
/// its first request instead of after a 401).
fn html(token_required: bool) -> Bytes {
    static WITH_TOKEN: OnceLock<Bytes> = OnceLock::new();
    if token_required {
        WITH_TOKEN
            .get_or_init(|| Bytes::from(HTML.replacen(AUTH_NONE, AUTH_BEARER, 1)))
            .clone()
    } else {
        Bytes::from_static(HTML.as_bytes())
    }
}

pub fn page(token_required: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(html(token_required)));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, csp().clone());
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        // Nothing fetched from elsewhere: no src/href to another origin, no protocol-relative
        // URL, and exactly one inline script and style (the CSP hashes name those).
        for bad in ["http://", "https://", "src=", "@import", "url("] {
            assert!(!HTML.contains(bad), "the page refers to {bad}");
        }
        // The only link is the icon, inline (else browsers fetch /favicon.ico: a 404).
        for (i, _) in HTML.match_indices("href=\"") {
            assert!(HTML[i + 6..].starts_with("data:"), "{}", &HTML[i..i + 40]);
        }
        assert_eq!(HTML.matches("<script>").count(), 1);
        assert_eq!(HTML.matches("<style>").count(), 1);
        assert!(inline("script").contains("fetch("), "the script was found");
        assert!(inline("style").contains("body"), "the style was found");
        let csp = csp().to_str().unwrap();
        assert!(csp.contains(&hash(inline("script"))), "{csp}");
    }

    #[test]
    fn the_page_says_whether_a_token_is_needed() {
        assert!(HTML.contains(AUTH_NONE));
        let with = html(true);
        let with = std::str::from_utf8(&with).unwrap();
        assert!(with.contains(AUTH_BEARER) && !with.contains(AUTH_NONE));
        // The marker is outside the hashed script and style.
        assert_eq!(inline("script"), {
            let s = with.find("<script>").unwrap() + 8;
            &with[s..s + with[s..].find("</script>").unwrap()]
        });
    }

    #[test]
    fn the_token_never_goes_into_a_url() {
        // The script sends the token as a header only.
        let js = inline("script");
        assert!(js.contains("Authorization"));
        assert!(!js.contains("?token") && !js.contains("&token"));
    }
}
