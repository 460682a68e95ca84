//! The PostgreSQL sink's TLS, with libpq's option names and meanings: `sslmode`
//! (`disable`, `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file of
//! the CA certificates to trust, or `system`).
//!
//! The default `sslmode` depends on the host, so that a local server works without
//! set-up and a remote one is never reached in clear text or without checking who
//! answers: `disable` for loopback (`127.0.0.0/8`, `::1`, `localhost`, a Unix socket
//! directory), `verify-full` otherwise. libpq's `allow` and `prefer`, which fall back
//! to an unencrypted connection, are refused. TLS is rustls (the TLS stack already in
//! the tree through deltalake) with its `ring` provider, through
//! `tokio-postgres-rustls`, which also gives SCRAM its channel binding.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::source::options::Options;

/// How the sink protects its connection (libpq's `sslmode`, minus the modes that fall
/// back to clear text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS (the default on loopback).
    Disable,
    /// TLS, the server's certificate not checked (with `sslrootcert`: as `verify-ca`,
    /// as libpq does).
    Require,
    /// TLS, the certificate signed by a CA of `sslrootcert`; its name not checked.
    VerifyCa,
    /// TLS, the certificate signed by a CA of `sslrootcert` and naming the host (the
    /// default beyond loopback).
    VerifyFull,
}

impl SslMode {
    /// The option value (`verify-full`), for messages.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The CA certificates a verifying mode trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// The system's trusted roots (`sslrootcert 'system'`, the default of the verifying
    /// modes).
    System,
    /// The certificates of this PEM file.
    File(PathBuf),
}

/// The sink's TLS settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// The mode, given or defaulted from the host.
    pub mode: SslMode,
    /// What `verify-ca` / `verify-full` (and `require` with `sslrootcert`) trust.
    pub root_cert: Option<RootCert>,
}

/// Whether `host` is this machine: an address in `127.0.0.0/8`, `::1`, `localhost`,
/// or a Unix socket directory (a path).
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim();
    host.eq_ignore_ascii_case("localhost")
        || host.starts_with('/')
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl TlsOptions {
    /// Takes `sslmode` and `sslrootcert` from `options`; `host` decides the default mode.
    pub fn parse(options: &mut Options, host: &str, what: &str) -> Result<Self> {
        let given = options.take("sslmode");
        let mode = match given.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None if is_loopback(host) => SslMode::Disable,
            None => SslMode::VerifyFull,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => {
                let hint = if matches!(other, "allow" | "prefer") {
                    " (libpq's 'allow' and 'prefer' fall back to an unencrypted connection; \
                     millrace does not)"
                } else {
                    ""
                };
                return Err(Error::Option(format!(
                    "sslmode '{other}' of {what}: use disable, require, verify-ca or \
                     verify-full{hint}"
                )));
            }
        };
        let root_cert = options.take("sslrootcert").map(|value| {
            if value.eq_ignore_ascii_case("system") {
                RootCert::System
            } else {
                RootCert::File(PathBuf::from(value))
            }
        });
        let (mode, root_cert) = match (mode, root_cert) {
            (SslMode::Disable, Some(_)) => {
                let why = if given.is_none() {
                    " (the default for a loopback host)"
                } else {
                    ""
                };
                return Err(Error::Option(format!(
                    "{what} gives sslrootcert but its sslmode is 'disable'{why}, so the \
                     certificate would not be checked: set sslmode to 'verify-full' or \
                     'verify-ca', or drop sslrootcert"
                )));
            }
            (SslMode::Disable, None) => (SslMode::Disable, None),
            // libpq: `require` with a root certificate verifies as `verify-ca`.
            (SslMode::Require, Some(root)) => (SslMode::VerifyCa, Some(root)),
            (SslMode::Require, None) => (SslMode::Require, None),
            (mode, root) => (mode, Some(root.unwrap_or(RootCert::System))),
        };
        Ok(TlsOptions { mode, root_cert })
    }

    /// `sslmode 'verify-full', sslrootcert '/ca.pem'`, for messages.
    pub fn describe(&self) -> String {
        let mut text = format!("sslmode '{}'", self.mode.name());
        match &self.root_cert {
            None => {}
            Some(RootCert::System) => text.push_str(", sslrootcert 'system'"),
            Some(RootCert::File(path)) => {
                text.push_str(&format!(", sslrootcert '{}'", path.display()))
            }
        }
        text
    }

    /// The TLS connector for tokio-postgres, or `None` for `disable`. Reads the CA
    /// certificates (so a missing or empty file is reported when the sink opens).
    pub fn connector(&self) -> Result<Option<MakeRustlsConnect>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match self.mode {
            SslMode::Disable => return Ok(None),
            _ => ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::Network(format!("PostgreSQL sink TLS set-up: {e}")))?,
        };
        let config = match (self.mode, &self.root_cert) {
            (SslMode::VerifyFull, Some(root)) => builder
                .with_root_certificates(root_store(root)?)
                .with_no_client_auth(),
            (SslMode::VerifyCa, Some(root)) => {
                let inner = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(root_store(root)?),
                    provider,
                )
                .build()
                .map_err(|e| Error::Option(format!("sslrootcert of the PostgreSQL sink: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(IgnoreName(inner)))
                    .with_no_client_auth()
            }
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        };
        Ok(Some(MakeRustlsConnect::new(config)))
    }
}

/// The certificates `root` names, as rustls's trust anchors.
fn root_store(root: &RootCert) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(Error::Option(
                    "the PostgreSQL sink found no system trusted root certificates \
                     (sslrootcert 'system', the default of sslmode verify-ca/verify-full): \
                     give sslrootcert the PEM file of the server's CA"
                        .to_string(),
                ));
            }
        }
        RootCert::File(path) => {
            let certs = read_pem(path)?;
            for cert in certs {
                store.add(cert).map_err(|e| {
                    Error::Option(format!(
                        "sslrootcert '{}' of the PostgreSQL sink: a certificate is not a \
                         usable CA: {e}",
                        path.display()
                    ))
                })?;
            }
        }
    }
    Ok(store)
}

/// Every certificate of a PEM file; an unreadable file or one without certificates
/// is an error naming `sslrootcert`.
fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |detail: String| {
        Error::Option(format!(
            "sslrootcert '{}' of the PostgreSQL sink: {detail}",
            path.display()
        ))
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM file of certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no certificate in it (expected PEM '-----BEGIN CERTIFICATE-----' blocks)".into(),
        ));
    }
    Ok(certs)
}

/// `verify-ca`: the chain is checked against the roots, a name mismatch is accepted.
#[derive(Debug)]
struct IgnoreName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` without `sslrootcert`: any certificate (encryption without
/// authentication, as libpq's `require`); the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(host: &str, pairs: &[(&str, &str)]) -> Result<TlsOptions> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut options = Options::new("POSTGRES sink 's'", pairs)?;
        TlsOptions::parse(&mut options, host, "POSTGRES sink 's'")
    }

    #[test]
    fn loopback_hosts_default_to_disable_others_to_verify_full() {
        for host in [
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "[::1]",
            "localhost",
            "/var/run/postgresql",
        ] {
            assert!(is_loopback(host), "{host}");
            assert_eq!(parse(host, &[]).unwrap().mode, SslMode::Disable, "{host}");
        }
        for host in ["db.example.com", "10.0.0.5", "128.0.0.1", "::2"] {
            assert!(!is_loopback(host), "{host}");
            let tls = parse(host, &[]).unwrap();
            assert_eq!(tls.mode, SslMode::VerifyFull, "{host}");
            assert_eq!(tls.root_cert, Some(RootCert::System), "{host}");
        }
    }

    #[test]
    fn modes_follow_libpq_and_refuse_what_would_not_be_checked() {
        let tls = parse(
            "db",
            &[("sslmode", "Verify-CA"), ("sslrootcert", "/ca.pem")],
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.describe(), "sslmode 'verify-ca', sslrootcert '/ca.pem'");
        // require + a root certificate verifies the chain, as libpq does.
        let tls = parse("db", &[("sslmode", "require"), ("sslrootcert", "/ca.pem")]).unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(
            parse("db", &[("sslmode", "require")]).unwrap().root_cert,
            None
        );
        assert_eq!(
            parse("127.0.0.1", &[("sslmode", "disable")]).unwrap().mode,
            SslMode::Disable
        );
        let e = parse("db", &[("sslmode", "prefer")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("verify-full") && e.contains("fall back"), "{e}");
        let e = parse("127.0.0.1", &[("sslrootcert", "/ca.pem")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslmode") && e.contains("loopback"), "{e}");
    }

    #[test]
    fn a_root_certificate_file_must_hold_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let tls = parse(
            "db",
            &[
                ("sslmode", "verify-full"),
                ("sslrootcert", empty.to_str().unwrap()),
            ],
        )
        .unwrap();
        let e = tls.connector().err().unwrap().to_string();
        assert!(
            e.contains("sslrootcert") && e.contains("no certificate"),
            "{e}"
        );
        let missing = dir.join("missing.pem");
        let tls = parse(
            "db",
            &[
                ("sslmode", "verify-full"),
                ("sslrootcert", missing.to_str().unwrap()),
            ],
        )
        .unwrap();
        let e = tls.connector().err().unwrap().to_string();
        assert!(
            e.contains("sslrootcert") && e.contains("cannot read"),
            "{e}"
        );
    }
}
