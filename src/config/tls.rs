//! `[listener.tls]`: certificates (read, parsed and checked against their keys while the config
//! is read, so `waypost check` and a reload name the bad file), protocol versions, ALPN, SNI
//! strictness, client certificates (mTLS) and HSTS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::reader::Obj;
use super::resolve;

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

/// One certificate chain with its key, loaded and checked.
#[derive(Clone)]
pub struct LoadedCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS names from the subject alternative names (the common name when there are
    /// none); wildcards kept as `*.example.com`.
    pub names: Vec<String>,
    /// Unix time after which the end-entity certificate is no longer valid.
    pub not_after: i64,
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The CA bundle that client certificates must chain to.
#[derive(Clone)]
pub struct ClientCa {
    pub file: PathBuf,
    pub roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Chosen by SNI; the first is the default.
    pub certificates: Vec<LoadedCert>,
    pub min_version: TlsVersion,
    pub alpn: Vec<String>,
    /// Refuse handshakes without SNI or with a name no certificate covers.
    pub sni_strict: bool,
    pub client_ca: Option<ClientCa>,
    /// Carries the verified client certificate's subject to backends; always removed from
    /// what clients send.
    pub client_cert_header: HeaderName,
    /// Strict-Transport-Security value added to every response.
    pub hsts: Option<HeaderValue>,
    /// Digest of every file read for this table (certificates, keys, client CA), in order: the
    /// config watcher compares it with the files on disk.
    pub files_digest: String,
}

impl TlsConfig {
    /// Every file this table reads, in the order `files_digest` covers them.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for c in &self.certificates {
            v.push(c.cert_file.clone());
            v.push(c.key_file.clone());
        }
        if let Some(ca) = &self.client_ca {
            v.push(ca.file.clone());
        }
        v
    }
}

/// Digest of files' bytes, as `TlsConfig::files_digest`. None when one cannot be read.
pub fn files_digest(files: &[PathBuf]) -> Option<String> {
    let mut all = Vec::new();
    for f in files {
        let b = std::fs::read(f).ok()?;
        all.extend_from_slice(&(b.len() as u64).to_le_bytes());
        all.extend_from_slice(&b);
    }
    Some(super::digest(&all))
}

pub const DEFAULT_CLIENT_CERT_HEADER: &str = "x-client-cert-subject";

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read_file(path: &Path, all: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    let b = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    all.extend_from_slice(&(b.len() as u64).to_le_bytes());
    all.extend_from_slice(&b);
    Ok(b)
}

/// Parse a PEM certificate chain.
pub fn parse_chain(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM certificate: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(chain)
}

/// Names and expiry of a DER certificate.
pub fn cert_info(path: &Path, der: &[u8]) -> Result<(Vec<String>, i64), String> {
    use x509_parser::prelude::*;
    let (_, cert) = parse_x509_certificate(der).map_err(|e| format!("{}: invalid certificate: {e}", path.display()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

fn load_cert(cert_file: &Path, key_file: &Path, all: &mut Vec<u8>) -> Result<LoadedCert, (bool, String)> {
    let cert_bytes = read_file(cert_file, all).map_err(|e| (false, e))?;
    let key_bytes = read_file(key_file, all).map_err(|e| (true, e))?;
    let chain = parse_chain(cert_file, &cert_bytes).map_err(|e| (false, e))?;
    let (names, not_after) = cert_info(cert_file, &chain[0]).map_err(|e| (false, e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key found (PKCS#8, PKCS#1 or SEC1)".to_string()
            }
            e => format!("invalid PEM private key: {e}"),
        };
        (true, format!("{}: {why}", key_file.display()))
    })?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => (
            true,
            format!(
                "the key in {} does not match the certificate in {}",
                key_file.display(),
                cert_file.display()
            ),
        ),
        e => (true, format!("{}: unusable private key: {e}", key_file.display())),
    })?;
    Ok(LoadedCert {
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        key: Arc::new(key),
        names,
        not_after,
    })
}

/// Read `[listener.tls]`.
pub fn read_tls(o: Obj, base: Option<&Path>) -> Option<TlsConfig> {
    let mut all = Vec::new();
    let mut ok = true;
    let mut certificates = Vec::new();
    if !o.has("certificates") {
        o.problem_here("missing required key `certificates`");
        ok = false;
    }
    let cert_objs = o.objs("certificates");
    if o.has("certificates") && cert_objs.is_empty() && o.str_or_list_len("certificates") == Some(0) {
        o.problem("certificates", "at least one certificate is required");
        ok = false;
    }
    for c in cert_objs {
        let cert = c.req_str("cert");
        let key = c.req_str("key");
        if let (Some(cert), Some(key)) = (cert, key) {
            let (cert, key) = (resolve(base, &cert), resolve(base, &key));
            match load_cert(&cert, &key, &mut all) {
                Ok(l) => certificates.push(l),
                Err((is_key, msg)) => {
                    c.problem(if is_key { "key" } else { "cert" }, msg);
                    ok = false;
                }
            }
        } else {
            ok = false;
        }
        c.finish();
    }
    let min_version = match o.str("min_version").as_deref() {
        None | Some("1.2") => TlsVersion::V12,
        Some("1.3") => TlsVersion::V13,
        Some(v) => {
            o.problem("min_version", format!("unknown version {v:?} (\"1.2\", \"1.3\")"));
            ok = false;
            TlsVersion::V12
        }
    };
    let alpn = match o.str_list("alpn") {
        None => vec!["h2".to_string(), "http/1.1".to_string()],
        Some(list) => {
            let mut v = Vec::new();
            for (p, at) in list {
                if p != "h2" && p != "http/1.1" {
                    o.ctx().problem(
                        at.path,
                        at.line,
                        format!("unknown protocol {p:?} (\"h2\", \"http/1.1\")"),
                    );
                    ok = false;
                } else if !v.contains(&p) {
                    v.push(p);
                }
            }
            v
        }
    };
    let sni_strict = o.bool("sni_strict").unwrap_or(false);
    let client_ca = o.str("client_ca").and_then(|f| {
        let path = resolve(base, &f);
        let loaded = read_file(&path, &mut all).and_then(|b| {
            let chain = parse_chain(&path, &b)?;
            let mut roots = RootCertStore::empty();
            for c in chain {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
            Ok(roots)
        });
        match loaded {
            Ok(roots) => Some(ClientCa {
                file: path,
                roots: Arc::new(roots),
            }),
            Err(e) => {
                o.problem("client_ca", e);
                ok = false;
                None
            }
        }
    });
    let client_cert_header = match o.str("client_cert_header") {
        None => HeaderName::from_static(DEFAULT_CLIENT_CERT_HEADER),
        Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                o.problem("client_cert_header", format!("invalid header name {h:?}"));
                ok = false;
                HeaderName::from_static(DEFAULT_CLIENT_CERT_HEADER)
            }
        },
    };
    let hsts = match o.str("hsts") {
        None => None,
        Some(v) if v.trim().is_empty() => {
            o.problem("hsts", "must not be empty (e.g. \"max-age=31536000\")");
            ok = false;
            None
        }
        Some(v) => match HeaderValue::from_str(v.trim()) {
            Ok(h) => Some(h),
            Err(_) => {
                o.problem("hsts", format!("invalid header value {v:?}"));
                ok = false;
                None
            }
        },
    };
    o.finish();
    if !ok {
        return None;
    }
    Some(TlsConfig {
        certificates,
        min_version,
        alpn,
        sni_strict,
        client_ca,
        client_cert_header,
        hsts,
        files_digest: super::digest(&all),
    })
}
