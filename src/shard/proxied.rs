//! A connection on a `proxy_protocol` listener: its PROXY header (`crate::proxy_protocol`) is
//! read, byte-exact, before the connection is admitted, so the client's real address is the
//! link's peer from the start (logs, ctl, ACL `ip` rules, limits) and TLS or MQTT begins with
//! the client's own first byte. A short-lived task of its own per connection until then; the
//! connection's usual task takes over once the header is read. A connection whose header is
//! missing, malformed or later than `proxy_protocol_timeout` is closed, logged and counted;
//! it was never admitted, so nothing else knows of it.

use std::cell::RefCell;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;

use super::{conn, Shard};
use crate::proxy_protocol::{parse, ProxyError, Step};
use crate::sock::{self, Stream};

/// Why no header came.
enum Failed {
    Proxy(ProxyError),
    Io(io::Error),
    TimedOut,
}

/// Reads the header of a connection accepted on `listener` from `peer` (the load balancer),
/// then serves it as the client the header names.
pub(super) async fn accept<S: Stream>(
    shard: Rc<RefCell<Shard>>,
    stream: S,
    peer: SocketAddr,
    listener: usize,
) {
    let secs = shard
        .borrow()
        .listeners
        .get(listener)
        .map_or(1, |l| l.cfg.proxy_protocol_timeout);
    let header = monoio::time::timeout(Duration::from_secs(secs), read_header(&stream)).await;
    let failed = match header {
        Ok(Ok(source)) => {
            let client = source.unwrap_or(peer);
            if let Some(accepted) = conn::admit::<S>(&shard, client, listener) {
                monoio::spawn(conn::serve(shard, stream, accepted));
            }
            return;
        }
        Ok(Err(f)) => f,
        Err(_) => Failed::TimedOut,
    };
    let why = match failed {
        Failed::Proxy(e) => e.to_string(),
        Failed::Io(e) => format!("read failed: {e}"),
        Failed::TimedOut => "no PROXY header in time".into(),
    };
    tracing::info!(%peer, why, "closing a connection without a valid PROXY header");
    shard
        .borrow()
        .stats
        .refused(crate::stats::Refusal::ProxyHeader);
}

/// The source address the header names (`None`: the connection's own), reading only its bytes.
async fn read_header(stream: &impl Stream) -> Result<Option<SocketAddr>, Failed> {
    let mut buf = BytesMut::new();
    loop {
        let need = match parse(&buf).map_err(Failed::Proxy)? {
            Step::Done(source) => return Ok(source),
            Step::Need(n) => n,
        };
        stream.readable().await.map_err(Failed::Io)?;
        match sock::recv_up_to(stream, &mut buf, need) {
            Ok(0) => {
                let eof = io::Error::new(ErrorKind::UnexpectedEof, "closed before the header");
                return Err(Failed::Io(eof));
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(Failed::Io(e)),
        }
    }
}
