//! TLS to backends (`tls = true` on a pool): the client configurations, built with the pool from
//! the trust roots the config validated (so a bad `ca_file` is a config error naming the key),
//! the server name each backend is verified against, and the handshake.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamTlsConfig;
use crate::error::ProxyError;

/// A pool's upstream TLS settings: the trust roots and two client configurations, one offering
/// h2 and http/1.1 by ALPN, one offering only http/1.1 (upgrades and health checks).
pub struct UpstreamTls {
    /// None: the system's root certificates.
    pub ca_file: Option<PathBuf>,
    /// Identifies the trust roots, so a reload with the same ones keeps the pool's backends.
    pub digest: String,
    pub both: Arc<ClientConfig>,
    pub h1_only: Arc<ClientConfig>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The client configurations for a pool's validated trust roots.
    pub fn build(cfg: &UpstreamTlsConfig) -> UpstreamTls {
        let mut roots = RootCertStore::empty();
        // Validation already added each of them to a store of its own: none fails here.
        roots.add_parsable_certificates(cfg.roots.iter().cloned());
        let roots = Arc::new(roots);
        let build = |alpn: &[&[u8]]| -> Arc<ClientConfig> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut c = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default protocol versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        UpstreamTls {
            ca_file: cfg.ca_file.clone(),
            digest: cfg.digest.clone(),
            both: build(&[b"h2", b"http/1.1"]),
            h1_only: build(&[b"http/1.1"]),
        }
    }
}

/// One backend's TLS: its pool's settings and the name its certificate must carry.
#[derive(Debug)]
pub struct BackendTls {
    pub conf: Arc<UpstreamTls>,
    pub name: ServerName<'static>,
}

impl BackendTls {
    /// The configured host name when the backend was given by name, else its IP address.
    pub fn new(conf: Arc<UpstreamTls>, host: Option<&str>, addr: SocketAddr) -> BackendTls {
        let name = host
            .and_then(|h| ServerName::try_from(h.to_string()).ok())
            .unwrap_or(ServerName::IpAddress(addr.ip().into()));
        BackendTls { conf, name }
    }

    /// Whether two backends would verify and connect the same way.
    pub fn same_as(&self, other: &BackendTls) -> bool {
        self.conf.digest == other.conf.digest && self.name == other.name
    }

    /// Connect and complete the handshake within `timeout`. A certificate that does not verify
    /// fails here, before any of a request is sent.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        h1_only: bool,
    ) -> Result<TlsStream<TcpStream>, ProxyError> {
        let config = if h1_only { &self.conf.h1_only } else { &self.conf.both };
        let connector = TlsConnector::from(config.clone());
        let attempt = async {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            connector.connect(self.name.clone(), stream).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => Err(ProxyError::UpstreamConnectTimeout),
            Ok(Err(e)) => Err(ProxyError::UpstreamConnect(e)),
            Ok(Ok(s)) => Ok(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> Arc<UpstreamTls> {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        Arc::new(UpstreamTls::build(
            &crate::config::load_trust_roots(Some(&path)).unwrap(),
        ))
    }

    #[test]
    fn server_name_is_the_configured_host_else_the_ip() {
        let c = conf();
        let addr: SocketAddr = "10.1.2.3:443".parse().unwrap();
        let named = BackendTls::new(c.clone(), Some("api.internal"), addr);
        assert_eq!(named.name, ServerName::try_from("api.internal").unwrap());
        let by_ip = BackendTls::new(c.clone(), None, addr);
        assert_eq!(by_ip.name, ServerName::IpAddress(addr.ip().into()));
        assert!(!named.same_as(&by_ip));
        assert!(by_ip.same_as(&BackendTls::new(c, None, addr)));
    }

    #[test]
    fn alpn_offers_h2_then_http1_and_h1_only_for_upgrades() {
        let c = conf();
        assert_eq!(c.both.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(c.h1_only.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn bad_ca_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(crate::config::load_trust_roots(Some(&missing))
            .unwrap_err()
            .contains("cannot read"));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello\n").unwrap();
        assert!(crate::config::load_trust_roots(Some(&garbage))
            .unwrap_err()
            .contains("no PEM certificate found"));
    }
}
