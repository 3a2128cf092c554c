//! The store alone under random operation sequences with a crash point: batches are committed
//! one by one, the store is closed, its journal is cut at a random byte (a crash in the middle
//! of a write), and what recovery reads back must be exactly the state after some prefix of
//! the committed batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use proptest::prelude::*;

use super::writer::{commit, fold, Folded};
use super::{session_ops, Op, Store};
use crate::codec::{Protocol, QoS, SubOptions};
use crate::config::DurabilityConfig;
use crate::session::{Delivery, DeliveryOp, Message, Session, StoreLog, SubIds, Subscription};

const IDS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Step {
    Subscribe(usize, u8),
    Put(usize),
    /// Made and sent at once (an online subscriber): its flight state inside its record.
    PutSent(usize, u16),
    /// Sent, or sent again with another packet id.
    Send(usize, u16),
    Ack(usize),
    End(usize),
    Retain(u8, u8),
    Unretain(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize, 0..4u8).prop_map(|(i, f)| Step::Subscribe(i, f)),
        (0..3usize).prop_map(Step::Put),
        (0..3usize, 1..9u16).prop_map(|(i, p)| Step::PutSent(i, p)),
        (0..3usize, 1..9u16).prop_map(|(i, p)| Step::Send(i, p)),
        (0..3usize).prop_map(Step::Ack),
        (0..3usize).prop_map(Step::End),
        (0..3u8, 0..9u8).prop_map(|(t, v)| Step::Retain(t, v)),
        (0..3u8).prop_map(Step::Unretain),
    ]
}

/// One session as the store should hold it: epoch, filters, seq -> packet id once sent.
type Kept = (u64, Vec<String>, BTreeMap<u64, Option<u16>>);

/// What the store should hold: the sessions and the retained messages.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    sessions: BTreeMap<String, Kept>,
    retained: BTreeMap<String, Vec<u8>>,
}

struct Live {
    session: Session,
    next_seq: u64,
}

fn message(topic: &str, v: u8) -> Arc<Message> {
    Arc::new(Message::new(
        topic.into(),
        Bytes::from(vec![v]),
        QoS::AtLeastOnce,
        false,
        None,
        "o".into(),
        Instant::now(),
    ))
}

/// Applies one step to the live sessions and the model; the store changes it makes.
fn apply(s: &Step, live: &mut BTreeMap<usize, Live>, m: &mut Model, epoch: &mut u64) -> Vec<Op> {
    let mut ops = Vec::new();
    let id = |i: usize| IDS[i].to_string();
    match s {
        Step::Subscribe(i, f) => {
            let l = live.entry(*i).or_insert_with(|| {
                *epoch += 1;
                let mut session = Session::new(IDS[*i].into(), Protocol::V5);
                session.expiry_interval = u32::MAX;
                session.stored = Some(Box::new(StoreLog::new(*epoch, 0)));
                Live {
                    session,
                    next_seq: 0,
                }
            });
            let sub = Subscription {
                options: SubOptions::qos(QoS::AtLeastOnce),
                id: None,
            };
            l.session.subscriptions.insert(format!("f/{f}").into(), sub);
            l.session.meta_changed();
            session_ops(&mut l.session, false, (None, None), true, &mut ops);
            let e = l.session.stored.as_ref().map_or(0, |x| x.epoch);
            let filters = l
                .session
                .subscriptions
                .keys()
                .map(|f| f.to_string())
                .collect();
            let entry = m
                .sessions
                .entry(id(*i))
                .or_insert((e, Vec::new(), BTreeMap::new()));
            entry.1 = filters;
        }
        Step::Put(i) | Step::PutSent(i, _) | Step::Send(i, _) | Step::Ack(i) => {
            let Some(l) = live.get_mut(i) else {
                return ops;
            };
            let e = l.session.stored.as_ref().map_or(0, |x| x.epoch);
            let Some(entry) = m.sessions.get_mut(&id(*i)) else {
                return ops;
            };
            let op = match s {
                Step::Put(_) | Step::PutSent(..) => {
                    // Packet ids in flight are unique in a session.
                    let pid = match s {
                        Step::PutSent(_, pid) if !entry.2.values().any(|p| *p == Some(*pid)) => {
                            Some(*pid)
                        }
                        _ => None,
                    };
                    l.next_seq += 1;
                    entry.2.insert(l.next_seq, pid);
                    DeliveryOp::Put {
                        seq: l.next_seq,
                        delivery: Delivery {
                            msg: message("t", l.next_seq as u8),
                            qos: QoS::AtLeastOnce,
                            retain: false,
                            sub_ids: SubIds::new(),
                            group: None,
                            seq: l.next_seq,
                            owed: None,
                        },
                        pid,
                    }
                }
                Step::Send(_, pid) => {
                    if entry.2.values().any(|p| *p == Some(*pid)) {
                        return ops;
                    }
                    let Some((seq, sent)) = entry.2.iter_mut().next() else {
                        return ops;
                    };
                    *sent = Some(*pid);
                    DeliveryOp::Sent {
                        seq: *seq,
                        pid: *pid,
                    }
                }
                _ => {
                    let Some(seq) = entry.2.keys().next().copied() else {
                        return ops;
                    };
                    entry.2.remove(&seq);
                    DeliveryOp::Del { seq }
                }
            };
            ops.push(Op::Delivery { epoch: e, op });
        }
        Step::End(i) => {
            if let Some(l) = live.remove(i) {
                let e = l.session.stored.as_ref().map_or(0, |x| x.epoch);
                ops.push(Op::EndSession {
                    client_id: IDS[*i].into(),
                    epoch: e,
                });
                m.sessions.remove(&id(*i));
            }
        }
        Step::Retain(t, v) => {
            ops.push(Op::Retain(message(&format!("r/{t}"), *v)));
            m.retained.insert(format!("r/{t}"), vec![*v]);
        }
        Step::Unretain(t) => {
            ops.push(Op::Unretain(format!("r/{t}").into()));
            m.retained.remove(&format!("r/{t}"));
        }
    }
    ops
}

/// What recovery read back, in the model's terms.
fn recovered(store: &Store) -> Model {
    let got = store.recover(Instant::now()).expect("recover");
    let mut m = Model::default();
    for r in got.sessions {
        let s = r.session;
        let mut d: BTreeMap<u64, Option<u16>> = s.queue.iter().map(|d| (d.seq, None)).collect();
        for (pid, f) in s.inflight.iter() {
            d.insert(f.delivery.seq, Some(pid));
        }
        let filters = s.subscriptions.keys().map(|f| f.to_string()).collect();
        m.sessions
            .insert(s.client_id.to_string(), (r.epoch, filters, d));
    }
    for msg in got.retained {
        m.retained
            .insert(msg.topic.to_string(), msg.payload.to_vec());
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn a_crash_recovers_a_prefix_of_the_committed_batches(
        batches in prop::collection::vec(prop::collection::vec(step(), 1..6), 1..12),
        cut in 0.0f64..1.0,
    ) {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = DurabilityConfig::default();
        let mut live = BTreeMap::new();
        let mut model = Model::default();
        let mut states = vec![model.clone()];
        let mut epoch = 0;
        {
            let store = Store::open(dir.path(), &cfg).expect("open");
            for b in &batches {
                let mut folded = Folded::new(&store);
                for s in b {
                    for op in apply(s, &mut live, &mut model, &mut epoch) {
                        fold(&store, &mut folded, op);
                    }
                }
                commit(&store, &mut folded).expect("commit");
                states.push(model.clone());
            }
            let orphans = store
                .flight
                .iter()
                .filter_map(|kv| kv.key().ok())
                .filter(|k| !store.queue.contains_key(k).unwrap_or(false))
                .count();
            prop_assert_eq!(orphans, 0, "a flight record outlived its delivery");
            prop_assert_eq!(recovered(&store), model.clone(), "before the crash: everything");
        }
        let journal = std::fs::read_dir(dir.path().join("store"))
            .expect("store dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
            .max()
            .expect("journal");
        let bytes = std::fs::read(&journal).expect("read");
        let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
        let keep = (end as f64 * cut) as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&journal)
            .and_then(|f| f.set_len(keep))
            .expect("cut");
        let store = Store::open(dir.path(), &cfg).expect("reopen after the crash");
        let back = recovered(&store);
        prop_assert!(states.contains(&back), "not a prefix: {:?}\nstates: {:?}", back, states);
    }
}

fn commit_ops(store: &Store, ops: Vec<Op>) {
    let mut folded = Folded::new(store);
    for op in ops {
        fold(store, &mut folded, op);
    }
    commit(store, &mut folded).expect("commit");
}

/// The expiry sweep's removal takes a retained message from the store only if the one kept
/// there expired too: a newer one set meanwhile (by another shard) stays.
#[test]
fn expired_retained_messages_leave_the_store_and_newer_ones_stay() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path(), &DurabilityConfig::default()).expect("open");
    let past = Instant::now() - std::time::Duration::from_secs(5);
    let expiring = |topic: &str| {
        let props = crate::codec::Properties {
            message_expiry_interval: Some(1),
            ..Default::default()
        };
        let m = Message::new(
            topic.into(),
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            true,
            Some(&props),
            "o".into(),
            past,
        );
        Op::Retain(Arc::new(m))
    };
    commit_ops(
        &store,
        vec![expiring("r/old"), Op::Retain(message("r/new", 1))],
    );
    assert_eq!(store.retained.len().expect("len"), 2);
    commit_ops(
        &store,
        vec![
            Op::ExpireRetained("r/old".into()),
            Op::ExpireRetained("r/new".into()),
        ],
    );
    assert_eq!(
        store.retained.len().expect("len"),
        1,
        "only the expired one went"
    );
    // Within one group, the last word on a key is what the expiry looks at.
    commit_ops(
        &store,
        vec![expiring("r/grp"), Op::ExpireRetained("r/grp".into())],
    );
    commit_ops(&store, vec![Op::ExpireRetained("r/missing".into())]);
    assert_eq!(store.retained.len().expect("len"), 1);
}

#[test]
fn delayed_publishes_are_kept_until_released() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path(), &DurabilityConfig::default()).expect("open");
    let held = |at: u64| {
        Arc::new(super::record::DelayedMessage {
            publish_at: at,
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: true,
            props: None,
            origin: "c".into(),
        })
    };
    commit_ops(
        &store,
        vec![Op::Delay(7, held(100)), Op::Delay(9, held(50))],
    );
    commit_ops(&store, vec![Op::Undelay(9)]);
    let got = store.recover(Instant::now()).expect("recover");
    assert_eq!(got.delayed.len(), 1);
    assert_eq!(got.delayed[0].0, 7);
    assert_eq!(got.delayed[0].1.publish_at, 100);
    assert!(got.delayed[0].1.retain);
}
