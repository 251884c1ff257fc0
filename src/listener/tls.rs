//! TLS termination for one listener in one generation: the rustls server config (certificates
//! chosen by SNI, versions, ALPN, client verification), built with the ring provider. Each
//! generation has its own, so a reload changes what new handshakes see while open connections
//! keep theirs; session tickets and the session cache carry over between generations.

use std::sync::Arc;

use ::metrics::Counter;
use http::{HeaderName, HeaderValue};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::admin::metrics;
use crate::config::tls::{TlsConfig, TlsVersion};

/// Sessions kept for resumption by session ID (tickets need no server memory).
const SESSION_CACHE_SIZE: usize = 20_000;

pub struct TlsListener {
    pub acceptor: TlsAcceptor,
    pub handshakes: Counter,
    pub handshake_errors: Counter,
    pub client_cert_header: HeaderName,
    pub hsts: Option<HeaderValue>,
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions + Send + Sync>,
    /// The client CA's trust anchors: resumed sessions skip client verification, so they
    /// only carry over while the CA stays the same.
    client_ca: Option<Vec<u8>>,
}

/// Certificates by name: exact names first, then `*.` wildcards (one label); the first
/// certificate for anything else unless strict.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<(Arc<CertifiedKey>, Vec<String>)>,
    strict: bool,
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some((k, _)) = self.certs.iter().find(|(_, names)| names.contains(&name)) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                let wildcard = format!("*.{parent}");
                if let Some((k, _)) = self.certs.iter().find(|(_, names)| names.contains(&wildcard)) {
                    return Some(k.clone());
                }
            }
        }
        if self.strict {
            return None;
        }
        self.certs.first().map(|(k, _)| k.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

impl TlsListener {
    /// Build the listener's TLS for a generation, keeping `previous`'s tickets and sessions.
    pub fn build(listener: &str, cfg: &TlsConfig, previous: Option<&TlsListener>) -> Result<TlsListener, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
            TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("listener {listener:?}: {e}"))?;
        let verifier = match &cfg.client_ca {
            Some(ca) => WebPkiClientVerifier::builder_with_provider(ca.roots.clone(), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.file.display()))?,
            None => WebPkiClientVerifier::no_client_auth(),
        };
        let resolver = SniResolver {
            certs: cfg
                .certificates
                .iter()
                .map(|c| (c.key.clone(), c.names.clone()))
                .collect(),
            strict: cfg.sni_strict,
        };
        let mut config = builder
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let client_ca = cfg.client_ca.as_ref().map(|ca| {
            ca.roots
                .roots
                .iter()
                .flat_map(|r| [r.subject.as_ref(), r.subject_public_key_info.as_ref()].concat())
                .collect::<Vec<u8>>()
        });
        let (ticketer, cache) = match previous.filter(|p| p.client_ca == client_ca) {
            Some(p) => (p.ticketer.clone(), p.cache.clone()),
            None => (
                rustls::crypto::ring::Ticketer::new().map_err(|e| format!("listener {listener:?}: {e}"))?,
                rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)
                    as Arc<dyn StoresServerSessions + Send + Sync>,
            ),
        };
        config.ticketer = ticketer.clone();
        config.session_storage = cache.clone();
        for c in &cfg.certificates {
            metrics::set_cert_not_after(&c.cert_file.display().to_string(), c.not_after);
        }
        Ok(TlsListener {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshakes: metrics::tls_handshakes(listener),
            handshake_errors: metrics::tls_handshake_errors(listener),
            client_cert_header: cfg.client_cert_header.clone(),
            hsts: cfg.hsts.clone(),
            ticketer,
            cache,
            client_ca,
        })
    }
}

/// The subject of a verified client certificate (RFC 4514-style, e.g. `CN=alice, O=Example`),
/// as a header value.
pub fn client_subject(conn: &rustls::ServerConnection) -> Option<HeaderValue> {
    let der = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    // Non-ASCII names pass as UTF-8 bytes (obs-text); control characters make it absent.
    HeaderValue::from_bytes(cert.subject().to_string().as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<CertifiedKey> {
        let c = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(c.key_pair.serialize_der()).unwrap();
        Arc::new(
            CertifiedKey::from_der(
                vec![c.cert.der().clone()],
                der,
                &rustls::crypto::ring::default_provider(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn sni_exact_then_wildcard_then_default_unless_strict() {
        let (a, b, w) = (key(), key(), key());
        let mut r = SniResolver {
            certs: vec![
                (a.clone(), vec!["a.test".into()]),
                (b.clone(), vec!["b.test".into(), "x.w.test".into()]),
                (w.clone(), vec!["*.w.test".into()]),
            ],
            strict: false,
        };
        assert!(Arc::ptr_eq(&r.pick(Some("A.TEST")).unwrap(), &a));
        assert!(Arc::ptr_eq(&r.pick(Some("b.test")).unwrap(), &b));
        assert!(Arc::ptr_eq(&r.pick(Some("x.w.test")).unwrap(), &b));
        assert!(Arc::ptr_eq(&r.pick(Some("y.w.test")).unwrap(), &w));
        assert!(Arc::ptr_eq(&r.pick(Some("z.y.w.test")).unwrap(), &a));
        assert!(Arc::ptr_eq(&r.pick(None).unwrap(), &a));
        r.strict = true;
        assert!(r.pick(Some("other.test")).is_none());
        assert!(r.pick(None).is_none());
        assert!(r.pick(Some("y.w.test")).is_some());
    }
}
