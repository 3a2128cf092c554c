//! TLS for the `tls` and `wss` listeners, with rustls (ring provider, TLS 1.2 and 1.3): the
//! server configuration from PEM files, optional client-certificate verification against a CA
//! (mutual TLS), and the name a verified client certificate vouches for.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{Config, ListenerConfig, PeerCertAsUsername};

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

/// The rustls configuration of a TLS listener; errors name the file and the reason.
pub fn server_config(l: &ListenerConfig) -> Result<Arc<ServerConfig>, String> {
    let (Some(certfile), Some(keyfile)) = (&l.certfile, &l.keyfile) else {
        return Err("a TLS listener needs certfile and keyfile".into());
    };
    let chain = certs(certfile)?;
    let key =
        PrivateKeyDer::from_pem_file(keyfile).map_err(|e| format!("{}: {e}", keyfile.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match (&l.cafile, l.verify_peer) {
        (Some(ca), true) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
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
