//! The ACME client's HTTPS: one request per connection over the hyper and rustls that pixelrelay
//! already carries (instant-acme's own client would bring a second TLS stack and a platform
//! verifier). The CA is trusted through the webpki roots plus `http.acme.ca_file`.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::http;
use hyper::http::header::HOST;
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Time allowed for one request, connection to last byte of the head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTPS to the ACME directory and the URLs it names.
pub struct Client {
    /// TLS with the trusted roots.
    tls: TlsConnector,
}

impl Client {
    /// A client trusting the webpki roots and the PEM certificates in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<Client, String> {
        let roots = crate::tls::trusted_roots(ca_file, "http.acme.ca_file")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("http.acme: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, send(tls, req)).await {
                Ok(r) => r.map_err(|e| Error::Other(e.into())),
                Err(_) => Err(Error::Other("ACME request timed out".into())),
            }
        })
    }
}

/// One request on a fresh connection; the body is read by instant-acme afterwards.
async fn send(
    tls: TlsConnector,
    req: http::Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, String> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err(format!("{uri}: the ACME directory must be an https URL"));
    }
    let authority = uri.authority().ok_or_else(|| format!("{uri}: no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{host}:{port}: TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    let host_header =
        http::HeaderValue::from_str(authority.as_str()).map_err(|e| format!("{authority}: {e}"))?;
    parts.headers.insert(HOST, host_header);
    parts.uri = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|e| format!("{uri}: {e}"))?;
    let rsp = sender
        .send_request(http::Request::from_parts(parts, body))
        .await
        .map_err(|e| format!("{uri}: {e}"))?;
    Ok(BytesResponse::from(rsp))
}
