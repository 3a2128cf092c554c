//! This node in the cluster, on its own thread with a small tokio runtime (openraft needs one):
//! the Raft engine, the service peers talk to, joining (or forming) the cluster from the
//! seeds, the proposer that turns this node's route changes and retained messages into
//! commands (in order, batched, retried until the cluster takes them), and the leader's
//! watch over silent nodes. What the applied log changes is handed to the shards
//! ([`super::ShardLink`]); no shard ever waits on any of this.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{ChangeMembers, Config, ServerState};
use tokio::sync::mpsc::UnboundedReceiver;

use super::net::Peer;
use super::state::{Effect, Machine};
use super::types::{node_id, Command, NodeId, NodeInfo, Raft, Reply, Types};
use super::wire::{Request, Response, Status, Trust};
use super::{Event, Shards, Summary};

/// How long a control call to a peer may take.
const CALL: Duration = Duration::from_secs(3);

/// What a membership change of openraft's can answer.
type ChangeError = RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>;

/// What the service and the loops share.
pub struct Core {
    pub raft: Raft,
    me: NodeId,
    info: NodeInfo,
    trust: Trust,
    voter: bool,
    pub machine: Arc<Mutex<Machine>>,
    /// When each peer last answered this node's ping (the leader's failure detector).
    heard: Mutex<HashMap<NodeId, Instant>>,
    /// `cluster.node_timeout_ms`.
    timeout: Duration,
    /// The log index up to which what applying changed is with the shards (their rings hold
    /// it ahead of anything a client sends after hearing of the change).
    handed: tokio::sync::watch::Sender<u64>,
}

fn errors(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Core {
    pub fn new(
        raft: Raft,
        info: NodeInfo,
        trust: Trust,
        voter: bool,
        machine: Arc<Mutex<Machine>>,
        timeout: Duration,
    ) -> Core {
        Core {
            timeout,
            me: node_id(&info.name),
            raft,
            info,
            trust,
            voter,
            machine,
            heard: Mutex::default(),
            handed: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn id(&self) -> NodeId {
        self.me
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The members as the applied membership has them.
    pub fn members(&self) -> BTreeMap<NodeId, NodeInfo> {
        self.machine()
            .membership
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    fn is_member(&self) -> bool {
        self.machine()
            .membership
            .membership()
            .get_node(&self.me)
            .is_some()
    }

    /// Answers a peer's request.
    pub async fn handle(&self, peer: NodeId, req: Request) -> Response {
        match req {
            Request::Append(r) => Response::Append(self.raft.append_entries(r).await),
            Request::Vote(r) => Response::Vote(self.raft.vote(r).await),
            Request::Snapshot(r) => Response::Snapshot(self.raft.install_snapshot(r).await),
            Request::Write(cmd) => Response::Write(self.write(cmd).await),
            Request::Applied(index) => Response::Applied(self.applied(index).await),
            Request::Join { node, info, voter } => {
                Response::Join(self.admit(node, info, voter).await)
            }
            Request::Remove(node) => Response::Remove(self.remove(node).await),
            Request::Status => Response::Status(self.status()),
            Request::Ping => {
                self.heard_from(peer);
                Response::Pong
            }
        }
    }

    fn heard_from(&self, peer: NodeId) {
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, Instant::now());
    }

    pub fn status(&self) -> Status {
        Status {
            node: self.me,
            name: self.info.name.clone(),
            member: self.is_member(),
            leader: self.leader().ok(),
        }
    }

    /// (As the leader) makes `node` a learner, then a voter if asked. Each step waits, up to
    /// half the joining node's call, for a membership change still in flight (another node's
    /// admission) to commit: openraft refuses a second change meanwhile.
    async fn admit(&self, node: NodeId, info: NodeInfo, voter: bool) -> Result<(), String> {
        tracing::info!(node = %info, voter, "a node asks to join the cluster");
        let deadline = Instant::now() + CALL / 2;
        after_changes_in_flight(deadline, || self.raft.add_learner(node, info.clone(), true))
            .await?;
        if voter {
            let ids = BTreeSet::from([node]);
            after_changes_in_flight(deadline, || {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(ids.clone()), false)
            })
            .await?;
        }
        Ok(())
    }

    /// Whether this node is in the applied membership as what it asked to be (a voter, or a
    /// learner). A node admitted as a learner whose promotion was refused is not joined yet.
    fn joined(&self) -> bool {
        let m = self.machine();
        if self.voter {
            m.membership.voter_ids().any(|id| id == self.me)
        } else {
            m.membership.membership().get_node(&self.me).is_some()
        }
    }

    /// (As the leader) removes `node` from the membership, voter or learner.
    async fn remove(&self, node: NodeId) -> Result<(), String> {
        let ids = BTreeSet::from([node]);
        let voters: BTreeSet<NodeId> = self.machine().membership.voter_ids().collect();
        if voters.contains(&node) {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
                .await
                .map_err(errors)?;
        }
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false)
            .await
            .map_err(errors)
            .map(|_| ())
    }

    /// Carries out an operator's change to the membership; what was done.
    pub async fn admin(&self, op: super::Admin) -> Result<String, String> {
        use super::Admin;
        let members = self.members();
        let others = members.keys().filter(|n| **n != self.me).count();
        match op {
            Admin::Join(_) if self.is_member() && others > 0 => Err(format!(
                "this node is a member of a cluster of {} nodes: `ctl cluster leave` first",
                others + 1
            )),
            Admin::Join(_) if self.is_member() => Err(
                "this node formed a cluster of its own (it had no seeds): to join another, start \
                 it on an empty data dir with the seed in cluster.seeds"
                    .into(),
            ),
            Admin::Join(seed) => {
                match Peers::call_addr(self, &seed, &Request::Status).await? {
                    Response::Status(s) if s.member => {}
                    _ => return Err(format!("{seed} is not a member of a cluster")),
                }
                let req = Request::Join {
                    node: self.me,
                    info: self.info.clone(),
                    voter: self.voter,
                };
                match Peers::call_addr(self, &seed, &req).await? {
                    Response::Join(Ok(())) => Ok(format!("joined the cluster through {seed}")),
                    Response::Join(Err(e)) => Err(e),
                    _ => Err(format!("{seed} answered something else")),
                }
            }
            Admin::Leave => self
                .removed(self.me)
                .await
                .map(|()| "left the cluster".into()),
            Admin::Remove(name) => {
                let node = members
                    .iter()
                    .find(|(_, n)| n.name == name)
                    .map(|(id, _)| *id)
                    .ok_or_else(|| format!("no member is named {name}"))?;
                self.removed(node).await.map(|()| format!("removed {name}"))
            }
        }
    }

    /// Has the leader remove `node` (this one or another). A leader that removes itself steps
    /// down once it is no longer a voter: the rest is asked of the next leader.
    async fn removed(&self, node: NodeId) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout * 10;
        let mut peers = Peers::default();
        loop {
            let done = match self.leader() {
                Ok(l) if l == self.me => self.remove(node).await,
                Ok(l) => match peers.call(self, l, &Request::Remove(node)).await {
                    Ok(Response::Remove(r)) => r,
                    other => Err(format!("the leader did not remove it: {other:?}")),
                },
                Err(e) => Err(e),
            };
            if done.is_ok() || Instant::now() > deadline {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Appends `cmd` as the leader, waiting for its commit at most the node timeout: a leader
    /// cut off from the majority never commits, and the caller must not wait for it.
    async fn write(&self, cmd: Command) -> Result<(u64, Reply), String> {
        match tokio::time::timeout(self.timeout, self.raft.client_write(cmd)).await {
            Ok(r) => r.map(|r| (r.log_id.index, r.data)).map_err(errors),
            Err(_) => Err("not committed in time: no majority acknowledges this leader".into()),
        }
    }

    /// Whether what the log up to `index` changed is with this node's shards, waiting up to
    /// half the node timeout for it: a publish a client sends here after hearing of the change
    /// sees it. (Raft's applied index alone comes before the effects reach the shards.)
    async fn applied(&self, index: u64) -> bool {
        let mut handed = self.handed.subscribe();
        tokio::time::timeout(self.timeout / 2, handed.wait_for(|h| *h >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// What the log up to `index` changed is with the shards.
    fn handed_up_to(&self, index: u64) {
        self.handed.send_if_modified(|h| {
            let later = index > *h;
            *h = (*h).max(index);
            later
        });
    }

    /// Waits until every member not dropped for silence has applied the log up to `index`
    /// (each bounded by the node timeout), so that what was committed there is seen by all.
    pub async fn applied_everywhere(&self, index: u64, peers: &mut Peers) {
        let down = self.machine().data.down.clone();
        for node in self.members().into_keys().filter(|n| !down.contains(n)) {
            let answer = if node == self.me {
                Ok(Response::Applied(self.applied(index).await))
            } else {
                peers.call(self, node, &Request::Applied(index)).await
            };
            if !matches!(answer, Ok(Response::Applied(true))) {
                tracing::debug!(
                    node = format!("{node:x}"),
                    index,
                    ?answer,
                    "a node did not say it applied an entry in time"
                );
            }
        }
    }

    /// Proposes `cmd`: here when this node leads, else through the leader; its log index and
    /// answer once committed. An error when there is no leader (a minority side) or it could
    /// not be reached.
    pub async fn propose(&self, cmd: Command, peers: &mut Peers) -> Result<(u64, Reply), String> {
        let leader = self.leader()?;
        if leader == self.me {
            return self.write(cmd).await;
        }
        match peers.call(self, leader, &Request::Write(cmd)).await? {
            Response::Write(r) => r,
            other => Err(format!("the leader did not take it: {other:?}")),
        }
    }

    /// The leader this node knows of; an error when it knows none (a minority side), or is
    /// the leader but no majority has acknowledged it within the node timeout (openraft keeps
    /// such a leader: it is cut off, and nothing it appends commits).
    pub fn leader(&self) -> Result<NodeId, String> {
        let m = self.raft.metrics().borrow().clone();
        let cut_off = m.current_leader == Some(self.me)
            && m.membership_config.membership().voter_ids().count() > 1
            && m.millis_since_quorum_ack
                .is_none_or(|ms| ms > self.timeout.as_millis() as u64);
        match m.current_leader {
            Some(l) if !cut_off => Ok(l),
            _ => Err("no leader: this node cannot reach a majority of the cluster".into()),
        }
    }
}

/// This node's connections to its peers for control calls.
#[derive(Default)]
pub struct Peers(HashMap<NodeId, Peer>);

impl Peers {
    pub async fn call(
        &mut self,
        core: &Core,
        to: NodeId,
        req: &Request,
    ) -> Result<Response, String> {
        let mut peer = self.take(core, to)?;
        let answer = peer.call(req, CALL).await;
        self.0.insert(to, peer);
        answer.map_err(errors)
    }

    /// Pings `nodes` all at once, each for at most `ttl`; the nodes that answered. (One after
    /// another, every host that died without a reset held the round up a whole call, and the
    /// noticing of the others with it.)
    pub async fn ping_all(
        &mut self,
        core: &Core,
        nodes: &[NodeId],
        ttl: Duration,
    ) -> BTreeSet<NodeId> {
        let mut calls = tokio::task::JoinSet::new();
        for &to in nodes {
            let Ok(mut peer) = self.take(core, to) else {
                continue;
            };
            calls.spawn(async move {
                let pong = matches!(peer.call(&Request::Ping, ttl).await, Ok(Response::Pong));
                (to, peer, pong)
            });
        }
        let mut answered = BTreeSet::new();
        while let Some(done) = calls.join_next().await {
            if let Ok((to, peer, pong)) = done {
                self.0.insert(to, peer);
                if pong {
                    answered.insert(to);
                }
            }
        }
        answered
    }

    /// The connection to member `to`, out of the cache (put it back after use); a new one when
    /// none is kept.
    fn take(&mut self, core: &Core, to: NodeId) -> Result<Peer, String> {
        let members = core.members();
        let info = members
            .get(&to)
            .ok_or_else(|| format!("node {to:x} is not a member"))?;
        Ok(self
            .0
            .remove(&to)
            .unwrap_or_else(|| Peer::new(to, &info.addr, core.trust.clone(), core.me)))
    }

    /// Calls a seed by address (it may not be a member yet).
    pub async fn call_addr(core: &Core, addr: &str, req: &Request) -> Result<Response, String> {
        let mut p = Peer::new(0, addr, core.trust.clone(), core.me);
        p.call(req, CALL).await.map_err(errors)
    }
}

/// The Raft settings: heartbeats often enough that a leader's death is noticed well within
/// `node_timeout_ms`.
pub fn raft_config(node_timeout_ms: u64) -> Result<Arc<Config>, String> {
    let heartbeat = (node_timeout_ms / 10).clamp(50, 500);
    let cfg = Config {
        cluster_name: "ringmq".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: heartbeat * 3,
        election_timeout_max: heartbeat * 6,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        max_in_snapshot_log_to_keep: 1_000,
        ..Default::default()
    };
    cfg.validate().map(Arc::new).map_err(errors)
}

/// Joins the cluster the seeds form, or forms it: a node with state of its own is a member
/// already; a new one asks a seed that is a member to admit it; when none is, the node whose
/// name is the least among all that answer forms the cluster alone, and the others join it.
pub async fn join(core: &Core, seeds: &[String]) {
    let initialized = core.raft.is_initialized().await.unwrap_or(false);
    if initialized {
        return;
    }
    if seeds.is_empty() {
        form(core).await;
        return;
    }
    loop {
        let mut names = vec![core.info.name.clone()];
        let mut answered = 0;
        for seed in seeds {
            match Peers::call_addr(core, seed, &Request::Status).await {
                Ok(Response::Status(s)) if s.member => {
                    let req = Request::Join {
                        node: core.me,
                        info: core.info.clone(),
                        voter: core.voter,
                    };
                    match Peers::call_addr(core, seed, &req).await {
                        Ok(Response::Join(Ok(()))) => {
                            tracing::info!(seed, "joined the cluster");
                            return;
                        }
                        other => {
                            tracing::info!(seed, answer = ?other, "a seed did not admit this node yet")
                        }
                    }
                }
                Ok(Response::Status(s)) => {
                    answered += 1;
                    names.push(s.name);
                }
                other => tracing::debug!(seed, answer = ?other, "a seed is not reachable yet"),
            }
        }
        let least = names.iter().min() == Some(&core.info.name);
        if answered == seeds.len() && least && core.voter {
            form(core).await;
            return;
        }
        // Admitted though the answer was lost or refused (the promotion to voter may still
        // be owed: asking again carries it out).
        if core.joined() {
            tracing::info!("joined the cluster");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs the membership change `change` makes, again while another one is in flight, until
/// `deadline`. A change still unanswered then is given up: adding a learner waits for it to
/// catch up, and a joining node that died would otherwise park its handler for good.
async fn after_changes_in_flight<F, Fut>(deadline: Instant, mut change: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<ClientWriteResponse<Types>, ChangeError>>,
{
    let until = tokio::time::Instant::from_std(deadline);
    loop {
        let Ok(answer) = tokio::time::timeout_at(until, change()).await else {
            return Err("the membership change did not complete in time".into());
        };
        match answer {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(errors(e)),
        }
    }
}

async fn form(core: &Core) {
    let members = BTreeMap::from([(core.me, core.info.clone())]);
    match core.raft.initialize(members).await {
        Ok(()) => tracing::info!(node = %core.info, "formed the cluster"),
        Err(e) => tracing::info!(error = %e, "not forming a cluster"),
    }
}

/// This node's routes as its shards report them, and the changes not yet taken by the cluster.
#[derive(Default)]
struct Routes {
    /// Filter -> how many of this node's shards have subscribers to it.
    shards: HashMap<String, u32>,
    add: BTreeSet<String>,
    remove: BTreeSet<String>,
    /// The whole set must be sent again (at start, and after the cluster dropped it).
    resend: bool,
}

impl Routes {
    fn shard_changed(&mut self, filter: String, add: bool) {
        let n = self.shards.entry(filter.clone()).or_default();
        let was = *n;
        *n = if add { *n + 1 } else { n.saturating_sub(1) };
        match (was, *n) {
            (0, 1) if !self.remove.remove(&filter) => {
                self.add.insert(filter);
            }
            (1, 0) => {
                self.shards.remove(&filter);
                if !self.add.remove(&filter) {
                    self.remove.insert(filter);
                }
            }
            _ => {}
        }
    }

    /// A command the cluster did not take, merged back into what came since (a set is sent
    /// again whole).
    fn put_back(&mut self, cmd: Command) {
        match cmd {
            Command::Routes { add, remove, .. } => {
                for f in add {
                    if !self.remove.remove(&f) {
                        self.add.insert(f);
                    }
                }
                for f in remove {
                    if !self.add.remove(&f) {
                        self.remove.insert(f);
                    }
                }
            }
            Command::RouteSet { .. } => self.resend = true,
            _ => {}
        }
    }

    /// The next command to propose, if any.
    fn next(&mut self, me: NodeId) -> Option<Command> {
        if self.resend {
            self.add.clear();
            self.remove.clear();
            return Some(Command::RouteSet {
                node: me,
                filters: self.shards.keys().cloned().collect(),
            });
        }
        if self.add.is_empty() && self.remove.is_empty() {
            return None;
        }
        Some(Command::Routes {
            node: me,
            add: std::mem::take(&mut self.add).into_iter().collect(),
            remove: std::mem::take(&mut self.remove).into_iter().collect(),
        })
    }
}

/// This node's session registry changes not yet taken by the cluster: at most one pending
/// change per client id (a release cancels the claim it ends when that was never sent), so
/// what waits while there is no leader is bounded by the clients connected here.
#[derive(Default)]
struct Registry {
    /// The node has not yet told the cluster it started (which voids its earlier claims: its
    /// connections did not survive).
    started: bool,
    /// Client id -> its epoch, and whether it resumes a persistent session.
    claims: HashMap<String, (u64, bool)>,
    releases: HashMap<String, u64>,
}

impl Registry {
    fn claim(&mut self, client_id: String, epoch: u64, resumes: bool) {
        self.releases.remove(&client_id);
        self.claims.insert(client_id, (epoch, resumes));
    }

    fn release(&mut self, client_id: String, epoch: u64) {
        if self
            .claims
            .get(&client_id)
            .is_some_and(|(e, _)| *e == epoch)
        {
            self.claims.remove(&client_id);
        } else {
            self.releases.insert(client_id, epoch);
        }
    }

    /// The claims resuming a persistent session, taken out (the cluster cannot take them
    /// now: their CONNECTs are refused rather than kept waiting).
    fn take_resuming(&mut self) -> Vec<(String, u64)> {
        let resuming: Vec<(String, u64)> = self
            .claims
            .iter()
            .filter(|(_, (_, resumes))| *resumes)
            .map(|(c, (e, _))| (c.clone(), *e))
            .collect();
        for (c, _) in &resuming {
            self.claims.remove(c);
        }
        resuming
    }

    /// A command the cluster did not take, merged back under what came since.
    fn put_back(&mut self, cmd: Command) {
        if let Command::Sessions {
            started,
            claims,
            releases,
            ..
        } = cmd
        {
            self.started |= started;
            for (c, e) in releases {
                if !self.claims.contains_key(&c) {
                    self.releases.entry(c).or_insert(e);
                }
            }
            for (c, e, resumes) in claims {
                if !self.releases.contains_key(&c) {
                    self.claims.entry(c).or_insert((e, resumes));
                }
            }
        }
    }

    fn next(&mut self, me: NodeId) -> Option<Command> {
        if !self.started && self.claims.is_empty() && self.releases.is_empty() {
            return None;
        }
        Some(Command::Sessions {
            node: me,
            started: std::mem::take(&mut self.started),
            claims: self.claims.drain().map(|(c, (e, r))| (c, e, r)).collect(),
            releases: self.releases.drain().collect(),
        })
    }
}

/// Turns what the shards report into commands, one at a time, until the cluster takes each.
/// A shard's first subscriber to a filter waits (its SUBACK does) until the route is applied on
/// every live node, so a publish anywhere right after it is routed here; when the cluster
/// cannot take the change (no leader) it is answered at once, the subscription working locally.
pub async fn propose_loop(
    core: Arc<Core>,
    mut events: UnboundedReceiver<Event>,
    shards: Arc<Shards>,
) {
    let mut routes = Routes {
        resend: true,
        ..Routes::default()
    };
    let mut retained = Vec::new();
    let mut sessions = Registry {
        started: true,
        claims: HashMap::new(),
        releases: HashMap::new(),
    };
    let mut waiting = Vec::new();
    let mut peers = Peers::default();
    let mut failing = false;
    loop {
        // Take everything waiting, then propose (batching while a proposal is under way).
        let first = if failing {
            tokio::time::timeout(Duration::from_millis(200), events.recv())
                .await
                .ok()
                .flatten()
        } else {
            match events.recv().await {
                Some(e) => Some(e),
                None => return,
            }
        };
        for e in first
            .into_iter()
            .chain(std::iter::from_fn(|| events.try_recv().ok()))
        {
            match e {
                Event::Interest { filter, add, ack } => {
                    routes.shard_changed(filter, add);
                    waiting.extend(ack);
                }
                Event::Retain(r) => retained.push(r),
                Event::Resend => routes.resend = true,
                Event::Claim {
                    client_id,
                    epoch,
                    resumes,
                } => sessions.claim(client_id, epoch, resumes),
                Event::Release { client_id, epoch } => sessions.release(client_id, epoch),
            }
        }
        if shards.alone() {
            // Left the cluster: nothing is proposed, nothing waits for it.
            for (client_id, epoch) in sessions.take_resuming() {
                shards.refuse_claim(client_id, epoch);
            }
            sessions = Registry::default();
            routes = Routes::default();
            retained.clear();
            for (shard, token) in waiting.drain(..) {
                shards.answer(shard, token);
            }
            continue;
        }
        failing = false;
        let mut committed = None;
        while let Some(cmd) = routes.next(core.me) {
            let resend = matches!(cmd, Command::RouteSet { .. });
            match core.propose(cmd.clone(), &mut peers).await {
                Ok((index, reply)) => {
                    committed = Some(index);
                    // Dropped meanwhile: the whole set goes now, before the SUBACKs waiting.
                    if reply == Reply::NodeDown {
                        routes.resend = true;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "route change not taken yet: will retry");
                    routes.put_back(cmd);
                    failing = true;
                    break;
                }
            }
            if resend {
                routes.resend = false;
            }
        }
        if let Some(index) = committed {
            core.applied_everywhere(index, &mut peers).await;
        }
        for (shard, token) in waiting.drain(..) {
            shards.answer(shard, token);
        }
        // (Taken only when it is proposed: a change taken and not proposed would be lost.)
        if let Some(cmd) = (!failing).then(|| sessions.next(core.me)).flatten() {
            if let Err(e) = core.propose(cmd.clone(), &mut peers).await {
                tracing::debug!(error = %e, "session registry change not taken yet: will retry");
                sessions.put_back(cmd);
                failing = true;
            }
        }
        if failing {
            for (client_id, epoch) in sessions.take_resuming() {
                shards.refuse_claim(client_id, epoch);
            }
        }
        while !failing && !retained.is_empty() {
            let r = retained.remove(0);
            if let Err(e) = core.propose(Command::Retain(r.clone()), &mut peers).await {
                tracing::debug!(error = %e, "retained message not taken yet: will retry");
                retained.insert(0, r);
                failing = true;
            }
        }
    }
}

/// The leader pings every member; one silent past `timeout` has its routes dropped.
pub async fn watch_loop(core: Arc<Core>, timeout: Duration) {
    let mut peers = Peers::default();
    let mut told: BTreeSet<NodeId> = BTreeSet::new();
    let every = (timeout / 5).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        let leading = core.raft.metrics().borrow().state == ServerState::Leader;
        if !leading {
            told.clear();
            continue;
        }
        let now = Instant::now();
        let others: Vec<NodeId> = core
            .members()
            .keys()
            .copied()
            .filter(|n| *n != core.me)
            .collect();
        let answered = peers.ping_all(&core, &others, timeout.min(CALL)).await;
        for node in others {
            if answered.contains(&node) {
                core.heard_from(node);
                told.remove(&node);
                continue;
            }
            let since = core
                .heard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(node)
                .or_insert(now)
                .elapsed();
            let down = core.machine().data.down.contains(&node);
            if since > timeout && !down && told.insert(node) {
                tracing::warn!(
                    node = format!("{node:x}"),
                    silent_ms = since.as_millis() as u64,
                    "a node is silent: dropping its routes"
                );
                if let Err(e) = core.propose(Command::Down { node }, &mut peers).await {
                    tracing::info!(error = %e, "could not drop a silent node's routes");
                    told.remove(&node);
                }
            }
        }
    }
}

/// Hands what the applied log changed to the shards; when this node's own routes were dropped
/// (it was cut off), asks the proposer to send them again.
pub async fn effect_loop(
    core: Arc<Core>,
    mut effects: UnboundedReceiver<Effect>,
    shards: Arc<Shards>,
    resend: tokio::sync::mpsc::UnboundedSender<Event>,
    summary: Arc<Mutex<Summary>>,
) {
    let mut members: BTreeMap<NodeId, NodeInfo> = BTreeMap::new();
    loop {
        // Once a second without anything applied, the status (a peer's lag) is refreshed.
        let first = match tokio::time::timeout(Duration::from_secs(1), effects.recv()).await {
            Ok(Some(e)) => Some(e),
            Ok(None) => return,
            Err(_) => None,
        };
        let now = core.members();
        if now != members {
            shards.members(core.me, &now);
            members = now;
        }
        for e in first
            .into_iter()
            .chain(std::iter::from_fn(|| effects.try_recv().ok()))
        {
            match &e {
                Effect::Down(node) if *node == core.me => {
                    tracing::warn!("the cluster dropped this node's routes: sending them again");
                    let _ = resend.send(Event::Resend);
                }
                // The effects come in the log's order: those before this one were handed on.
                Effect::Applied(index) => core.handed_up_to(*index),
                _ => {}
            }
            shards.apply(core.me, e);
        }
        summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refresh(&core);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_routes_change_only_on_the_first_and_last_shard_and_cancel_out() {
        let mut r = Routes::default();
        r.shard_changed("a/#".into(), true);
        r.shard_changed("a/#".into(), true);
        r.shard_changed("b".into(), true);
        r.shard_changed("b".into(), false);
        match r.next(7) {
            Some(Command::Routes { node, add, remove }) => {
                assert_eq!((node, add, remove), (7, vec!["a/#".to_string()], vec![]));
            }
            other => panic!("{other:?}"),
        }
        r.shard_changed("a/#".into(), false);
        assert!(r.next(7).is_none(), "one shard still has it");
        r.shard_changed("a/#".into(), false);
        assert!(matches!(r.next(7), Some(Command::Routes { remove, .. }) if remove == ["a/#"]));
        r.resend = true;
        r.shard_changed("c".into(), true);
        assert!(matches!(r.next(7), Some(Command::RouteSet { filters, .. }) if filters == ["c"]));
    }
}
