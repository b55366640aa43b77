//! What the pixel listener's handshakes see: the certificate the CA issued, or, for a CA's
//! TLS-ALPN-01 validation (RFC 8737), the challenge certificate for the name it asks for. Also
//! the certificate's validity period, read from its DER (when to renew), and PEM in and out.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The ALPN protocol of TLS-ALPN-01 validations.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Certificates for new handshakes, swapped without touching connections in progress.
#[derive(Debug, Default)]
pub struct Resolver {
    /// The issued certificate; `None` until the first one arrives.
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 challenge certificates by name, while their validations are pending.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Resolver {
    /// Serves `cert` to every new handshake.
    pub fn set(&self, cert: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(cert);
    }

    /// Whether a certificate is being served.
    pub fn has_certificate(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Answers validations of `name` with `cert` until [`Resolver::end_challenge`].
    pub fn begin_challenge(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.challenges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), cert);
    }

    /// Stops answering validations of `name`.
    pub fn end_challenge(&self, name: &str) {
        self.challenges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name.to_ascii_lowercase());
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut protos| protos.all(|p| p == ACME_TLS_ALPN));
        if validation {
            // RFC 8737 §3: the validator offers `acme-tls/1` alone and names the identifier.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .cloned();
        }
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The self-signed certificate that proves control of `name` to a TLS-ALPN-01 validator: `name`
/// as its only subject alternative name and the SHA-256 of the key authorization in the critical
/// `acmeIdentifier` extension.
pub fn challenge_certificate(name: &str, key_auth_digest: &[u8]) -> Result<CertifiedKey, String> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| format!("challenge certificate for {name}: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(key_auth_digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate for {name}: {e}"))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    certified(vec![cert.der().clone()], &der)
}

/// A chain and its key, ready for handshakes.
fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<CertifiedKey, String> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| format!("unusable private key: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// An issued certificate as the cache keeps it: the private key's PEM, then the chain's.
#[derive(Debug)]
pub struct Issued {
    /// Ready for handshakes.
    pub certified: Arc<CertifiedKey>,
    /// notBefore, seconds since the epoch.
    pub not_before: i64,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
}

impl Issued {
    /// Parses the cache's PEM (key, then chain, leaf first).
    pub fn from_pem(pem: &[u8]) -> Result<Issued, String> {
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("private key: {e}"))?;
        let chain = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate chain: {e}"))?;
        let leaf = chain.first().ok_or("no certificate in the chain")?;
        let (not_before, not_after) =
            validity(leaf).ok_or("certificate: cannot read its validity period")?;
        Ok(Issued {
            certified: Arc::new(certified(chain, &key)?),
            not_before,
            not_after,
        })
    }

    /// When to renew: two thirds of the way through the validity period (30 days before the
    /// end of a 90-day Let's Encrypt certificate), as certbot does.
    pub fn renew_at(&self) -> i64 {
        self.not_after - (self.not_after - self.not_before) / 3
    }
}

/// notBefore and notAfter of a DER certificate, in seconds since the epoch.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    // Certificate ::= SEQUENCE { tbsCertificate, ... }
    let (_, cert, _) = tlv(der)?;
    // TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
    //                               validity, ... }
    let (_, mut tbs, _) = tlv(cert)?;
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..3 {
        let (_, _, rest) = tlv(tbs)?;
        tbs = rest;
    }
    let (tag, validity, _) = tlv(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, v1, rest) = tlv(validity)?;
    let (t2, v2, _) = tlv(rest)?;
    Some((time(t1, v1)?, time(t2, v2)?))
}

/// One DER element: its tag, its contents and what follows it.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18) as
/// seconds since the epoch (RFC 5280 §4.1.2.5: always UTC, always with seconds).
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (year, rest) = match tag {
        0x17 if v.len() == 13 => {
            let yy = digits(&v[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &v[2..])
        }
        0x18 if v.len() == 15 => (digits(&v[..4])?, &v[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (h, m, s) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_valid(from: (i32, u8, u8), to: (i32, u8, u8)) -> (Vec<u8>, String) {
        let mut params = rcgen::CertificateParams::new(vec!["track.example.com".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = format!("{}{}", key.serialize_pem(), cert.pem());
        (cert.der().to_vec(), pem)
    }

    #[test]
    fn the_validity_period_is_read_from_utc_and_generalized_times() {
        // rcgen writes UTCTime before 2050 and GeneralizedTime from 2050 on (RFC 5280).
        let (der, _) = cert_valid((2026, 12, 7), (2027, 3, 7));
        assert_eq!(validity(&der), Some((1_796_601_600, 1_804_377_600)));
        let (der, _) = cert_valid((1999, 2, 28), (2051, 1, 1));
        assert_eq!(validity(&der), Some((920_160_000, 2_556_144_000)));
    }

    #[test]
    fn damaged_der_has_no_validity() {
        let (der, _) = cert_valid((2026, 12, 7), (2027, 3, 7));
        for cut in [0, 1, 5, 40, der.len() / 2] {
            assert_eq!(validity(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(validity(b"\x30\x84\xff\xff\xff\xff"), None);
    }

    #[test]
    fn renewal_comes_two_thirds_of_the_way_through() {
        let (_, pem) = cert_valid((2026, 12, 1), (2027, 3, 1));
        let issued = Issued::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(issued.not_after - issued.not_before, 90 * 86_400);
        assert_eq!(issued.renew_at(), issued.not_after - 30 * 86_400);
    }

    #[test]
    fn a_cache_file_without_a_key_or_chain_is_refused() {
        let (_, pem) = cert_valid((2026, 12, 1), (2027, 3, 1));
        let chain_only = pem.split("-----END PRIVATE KEY-----").nth(1).unwrap();
        assert!(Issued::from_pem(chain_only.as_bytes()).is_err());
        let key_only = pem.split("-----BEGIN CERTIFICATE-----").next().unwrap();
        assert!(Issued::from_pem(key_only.as_bytes()).is_err());
    }
}
