//! Test certificates made with rcgen: a certificate authority that issues server and client
//! leaves, for the TLS suites (listener TLS, mTLS, upstream TLS).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A test certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf for `names` (SANs; IP addresses become IP SANs) with `cn`, for a client or a
    /// server, with a key of `alg`.
    pub fn leaf(&self, names: &[&str], cn: &str, client: bool, alg: &'static rcgen::SignatureAlgorithm) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Waypost Tests");
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        // Each leaf its own expiry (a day apart, in 2040), so one can be told from another.
        static LEAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = LEAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params.not_after = rcgen::date_time_ymd(2040, 1, 1) + std::time::Duration::from_secs(86_400 * n);
        let not_after = params.not_after.unix_timestamp();
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            not_after,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// A server certificate (ECDSA P-256) for `names`: (cert PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let l = self.leaf(names, names[0], false, &rcgen::PKCS_ECDSA_P256_SHA256);
        (l.cert_pem, l.key_pem)
    }

    /// Write the CA certificate as `dir/name`; returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, self.cert.pem()).unwrap();
        p.display().to_string()
    }
}

pub struct Leaf {
    /// The certificate's notAfter, in Unix seconds.
    pub not_after: i64,
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl Leaf {
    /// Write `dir/name.crt` and `dir/name.key`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }

    /// The chain and key for a TLS client authenticating with this leaf.
    pub fn client_auth(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.der.clone()],
            PrivateKeyDer::try_from(self.key_der.clone()).unwrap(),
        )
    }
}
