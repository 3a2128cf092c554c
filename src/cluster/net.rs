//! Consensus connections between nodes (tokio, on the cluster thread): the client openraft
//! sends its replication and votes through ([`Network`], [`Peer`]), and the service that
//! answers them and the nodes' control requests (join, remove, a command for the leader,
//! status, ping). One authenticated TCP connection per (caller, peer), over mutual TLS when
//! `[cluster.tls]` is set (tokio-rustls), request and answer in turn; a broken one is dialled
//! again on the next request.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::node::Core;
use super::types::{NodeId, NodeInfo, Types};
use super::wire::{self, Answering, Dialling, Hello, Proof, Request, Response, Trust, Welcome};

/// How long a handshake may take before the connection is dropped.
const HANDSHAKE: Duration = Duration::from_secs(5);

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A connection between nodes: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}
type Stream = Box<dyn Io>;

async fn write_frame(s: &mut Stream, v: &impl Serialize) -> io::Result<()> {
    s.write_all(&wire::frame(v).map_err(invalid)?).await?;
    s.flush().await
}

async fn read_frame<T: DeserializeOwned>(s: &mut Stream) -> io::Result<T> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await?;
    let mut body = vec![0u8; wire::frame_len(header).map_err(invalid)?];
    s.read_exact(&mut body).await?;
    wire::decode(&body).map_err(invalid)
}

/// An authenticated connection to a peer's consensus service.
pub struct Conn(Stream);

impl Conn {
    /// Dials `addr` (over TLS when configured) and proves the cookie both ways.
    pub async fn open(addr: &str, trust: &Trust, me: NodeId) -> io::Result<Conn> {
        let work = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let mut s: Stream = match &trust.tls {
                Some(tls) => {
                    let name = tls.name_for(addr)?;
                    let connector = TlsConnector::from(tls.client_config());
                    Box::new(connector.connect(name, tcp).await?)
                }
                None => Box::new(tcp),
            };
            let (dialling, hello) = Dialling::start(&trust.cookie, me);
            write_frame(&mut s, &hello).await?;
            let welcome: Welcome = read_frame(&mut s).await?;
            let (proof, _) = dialling.finish(&welcome).map_err(invalid)?;
            write_frame(&mut s, &proof).await?;
            Ok(Conn(s))
        };
        tokio::time::timeout(HANDSHAKE, work)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "cluster handshake"))?
    }

    pub async fn call(&mut self, req: &Request) -> io::Result<Response> {
        write_frame(&mut self.0, req).await?;
        read_frame(&mut self.0).await
    }
}

/// One peer's consensus service, dialled on first use and again after a failure.
pub struct Peer {
    target: NodeId,
    addr: String,
    trust: Trust,
    me: NodeId,
    conn: Option<Conn>,
}

impl Peer {
    pub fn new(target: NodeId, addr: &str, trust: Trust, me: NodeId) -> Peer {
        Peer {
            target,
            addr: addr.to_string(),
            trust,
            me,
            conn: None,
        }
    }

    /// Sends `req` and waits (at most `ttl`) for the answer.
    pub async fn call(&mut self, req: &Request, ttl: Duration) -> io::Result<Response> {
        let work = async {
            let conn = match self.conn.as_mut() {
                Some(c) => c,
                None => self
                    .conn
                    .insert(Conn::open(&self.addr, &self.trust, self.me).await?),
            };
            conn.call(req).await
        };
        let answer = match tokio::time::timeout(ttl, work).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")),
        };
        if answer.is_err() {
            self.conn = None;
        }
        answer
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, NodeInfo, E> {
        RPCError::Network(NetworkError::new(&invalid("an answer of another kind")))
    }

    async fn raft_call<T, E>(
        &mut self,
        req: Request,
        option: &RPCOption,
        pick: impl FnOnce(Response) -> Option<Result<T, E>>,
    ) -> Result<T, RPCError<NodeId, NodeInfo, E>>
    where
        E: std::error::Error,
    {
        let answer = self
            .call(&req, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        match pick(answer) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            None => Err(self.unexpected()),
        }
    }
}

type RpcResult<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, NodeInfo, E>>;

impl RaftNetwork<Types> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Types>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.raft_call(Request::Append(rpc), &option, |r| match r {
            Response::Append(a) => Some(a),
            _ => None,
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Types>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.raft_call(Request::Snapshot(rpc), &option, |r| match r {
            Response::Snapshot(a) => Some(a),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.raft_call(Request::Vote(rpc), &option, |r| match r {
            Response::Vote(a) => Some(a),
            _ => None,
        })
        .await
    }
}

/// What openraft dials peers with.
#[derive(Clone)]
pub struct Network {
    pub trust: Trust,
    pub me: NodeId,
}

impl RaftNetworkFactory<Types> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer::new(target, &node.addr, self.trust.clone(), self.me)
    }
}

/// Accepts peers' consensus connections until the runtime ends.
pub async fn serve(listener: TcpListener, core: Arc<Core>) {
    loop {
        match listener.accept().await {
            Ok((s, from)) => {
                let core = core.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(s, &core).await {
                        tracing::debug!(%from, error = %e, "cluster connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One peer's connection: the handshakes (TLS when configured, then the cookie), then its
/// requests in turn.
async fn answer(tcp: TcpStream, core: &Core) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let trust = core.trust();
    let handshake = async {
        let mut s: Stream = match &trust.tls {
            Some(tls) => Box::new(TlsAcceptor::from(tls.server_config()).accept(tcp).await?),
            None => Box::new(tcp),
        };
        let hello: Hello = read_frame(&mut s).await?;
        let (answering, welcome) =
            Answering::start(&trust.cookie, core.id(), &hello).map_err(invalid)?;
        write_frame(&mut s, &welcome).await?;
        let proof: Proof = read_frame(&mut s).await?;
        let peer = answering.finish(&proof).map_err(invalid)?;
        Ok((s, peer))
    };
    let (mut s, peer) = match tokio::time::timeout(HANDSHAKE, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "refused a cluster connection");
            return Err(e);
        }
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake")),
    };
    loop {
        let req: Request = match read_frame(&mut s).await {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let resp = core.handle(peer, req).await;
        write_frame(&mut s, &resp).await?;
    }
}
