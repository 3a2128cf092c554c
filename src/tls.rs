//! TLS for the `tls` and `wss` listeners, with rustls (ring provider, TLS 1.2 and 1.3): the
//! server configuration from PEM files, optional client-certificate verification against a CA
//! (mutual TLS), and the name a verified client certificate vouches for; and the mutual TLS
//! between the nodes of a cluster (`[cluster.tls]`).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::config::{ClusterTlsConfig, Config, ListenerConfig, PeerCertAsUsername};

/// Each configured listener's TLS configuration (`None` for plain ones), in configuration
/// order: the certificates are read once and shared by every shard.
pub type TlsConfigs = Arc<[Option<Arc<rustls::ServerConfig>>]>;

/// Reads the certificates of every TLS listener in `cfg`; errors name the listener.
pub fn configs(cfg: &Config) -> Result<TlsConfigs, String> {
    cfg.listeners
        .iter()
        .map(|(name, l)| {
            l.kind
                .is_tls()
                .then(|| server_config(l).map_err(|e| format!("listeners.{name}: {e}")))
                .transpose()
        })
        .collect()
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The certificates of the CA file at `path`, as trust roots.
fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The rustls configuration of a TLS listener; errors name the file and the reason.
pub fn server_config(l: &ListenerConfig) -> Result<Arc<ServerConfig>, String> {
    let (Some(certfile), Some(keyfile)) = (&l.certfile, &l.keyfile) else {
        return Err("a TLS listener needs certfile and keyfile".into());
    };
    let chain = certs(certfile)?;
    let key = key(keyfile)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let builder = match (&l.cafile, l.verify_peer) {
        (Some(ca), true) => {
            let v = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider);
            let v = if l.fail_if_no_peer_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", certfile.display()))?;
    if l.kind.is_ws() {
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(cfg))
}

/// TLS between the nodes of a cluster: both ends show a certificate signed by the cluster's
/// CA and check the other's, whichever dialled.
pub struct ClusterTls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    server_name: Option<ServerName<'static>>,
}

impl ClusterTls {
    /// Reads `[cluster.tls]`'s files; errors name the file and the reason.
    pub fn new(c: &ClusterTlsConfig) -> Result<Arc<ClusterTls>, String> {
        let (chain, roots) = (certs(&c.certfile)?, roots(&c.cafile)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| e.to_string())?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key(&c.keyfile)?)
            .map_err(|e| format!("{}: {e}", c.certfile.display()))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key(&c.keyfile)?)
            .map_err(|e| format!("{}: {e}", c.certfile.display()))?;
        let server_name = c
            .server_name
            .as_deref()
            .map(|n| ServerName::try_from(n.to_string()))
            .transpose()
            .map_err(|e| format!("cluster.tls.server_name: {e}"))?;
        Ok(Arc::new(ClusterTls {
            client: Arc::new(client),
            server: Arc::new(server),
            server_name,
        }))
    }

    /// The name the certificate of the node at `addr` (host:port) must carry.
    pub fn name_for(&self, addr: &str) -> io::Result<ServerName<'static>> {
        match &self.server_name {
            Some(n) => Ok(n.clone()),
            None => host_name(addr),
        }
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The client side of a connection to the node at `addr`.
    pub fn dial(&self, addr: &str) -> io::Result<ClientConnection> {
        ClientConnection::new(self.client.clone(), self.name_for(addr)?).map_err(io::Error::other)
    }

    /// The server side of a connection a node dialled.
    pub fn accept(&self) -> io::Result<ServerConnection> {
        ServerConnection::new(self.server.clone()).map_err(io::Error::other)
    }
}

/// The host of `addr` (`host:port`, `[v6]:port`) as a TLS server name.
fn host_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))
}

/// The username a verified client certificate gives, as `how` says.
pub fn peer_name(cert: &CertificateDer<'_>, how: PeerCertAsUsername) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    match how {
        PeerCertAsUsername::None => None,
        PeerCertAsUsername::Cn => x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        PeerCertAsUsername::San => x509
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    GeneralName::RFC822Name(d) => Some(d.to_string()),
                    _ => None,
                })
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_address_names_its_certificate_by_ip_or_dns() {
        let ip = |s: &str| ServerName::IpAddress(s.parse::<std::net::IpAddr>().expect("ip").into());
        assert_eq!(host_name("10.0.0.1:5370").expect("v4"), ip("10.0.0.1"));
        assert_eq!(host_name("[fd00::1]:5370").expect("v6"), ip("fd00::1"));
        assert_eq!(
            host_name("node-2.cluster.local:5370").expect("dns"),
            ServerName::try_from("node-2.cluster.local").expect("name")
        );
        assert!(host_name("bad name:1").is_err());
    }
}
