//! Throw-away certificates for tests and the bench (dev-only; the bench includes this file
//! by path): a certificate authority made at start, and server or client certificates it
//! issues for `localhost` and 127.0.0.1. ECDSA P-256 (rcgen's default), X.509 v3.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::CertificateDer;

/// The names every issued certificate is valid for.
pub const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A throw-away certificate authority.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate the authority issued, and its key, as PEM and DER.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// The key in PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl Authority {
    /// A new authority whose common name is `NAME test CA`.
    pub fn new(name: &str) -> Result<Authority, String> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| failed("the CA's parameters", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().map_err(|e| failed("the CA's key", e))?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(|e| failed("the CA", e))?;
        Ok(Authority { issuer })
    }

    /// The authority's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The authority's certificate, DER (a trust root for rustls clients).
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// Issues a certificate for [`NAMES`], for a server or (`client`) a client.
    pub fn issue(&self, client: bool) -> Result<Issued, String> {
        let names = NAMES
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>();
        let mut params =
            CertificateParams::new(names).map_err(|e| failed("the certificate's parameters", e))?;
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().map_err(|e| failed("the certificate's key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| failed("the certificate", e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }
}

fn failed(what: &str, error: rcgen::Error) -> String {
    format!("cannot generate {what}: {error}")
}
