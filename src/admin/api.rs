//! The admin API's endpoints. Every shard is asked (its control queue) and the answers merged;
//! a client lives on one shard, so "show" and "kick" take the one shard that knows it.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /api/v1/status | version, uptime, shards, driver, counts, msg/s |
//! | GET | /api/v1/stats | every shard's counters, read without asking the shards |
//! | GET | /api/v1/config | the configuration in effect, secrets hidden |
//! | GET | /api/v1/clients[/ID] | sessions (connected or not), or one |
//! | DELETE | /api/v1/clients/ID | disconnect (v5: 0x98) |
//! | GET | /api/v1/subscriptions[/ID] | all subscriptions, or one client's |
//! | POST | /api/v1/subscribe, /api/v1/unsubscribe | `{"clientid","topic","qos"}` |
//! | GET | /api/v1/topics | filters subscribed to |
//! | GET, DELETE | /api/v1/retained[/TOPIC] | list, show, clean |
//! | GET, POST | /api/v1/banned | list; add `{"as": "clientid"|"username"|"peerhost", "who", "reason", "duration"}` (seconds; none: permanent) |
//! | DELETE | /api/v1/banned/KIND/VALUE | lift a ban |
//! | GET | /api/v1/delayed | delayed publishes held, earliest first |
//! | DELETE | /api/v1/delayed/ID | cancel one |
//! | POST | /api/v1/reload | re-read config, passwords, ACL, certificates |
//! | GET, PUT | /api/v1/log/level | `{"level": "debug"}` |
//! | GET, POST | /api/v1/trace | `{"kind": "client"|"topic", "value", "on"}` |
//! | GET | /api/v1/alarms | active alarms and the cleared ones (newest first) |
//! | GET | /metrics | Prometheus text format |

use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use tiny_http::Method;

use super::Answer;
use crate::banned::{Ban, BanKind};
use crate::broker::Broker;
use crate::control::Request;

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Merges the shards' answers: arrays concatenated, the first non-null value otherwise.
fn merged(replies: Vec<crate::control::Reply>) -> Result<Value, String> {
    let mut out: Option<Value> = None;
    for r in replies {
        match (r?, &mut out) {
            (Value::Array(a), Some(Value::Array(acc))) => acc.extend(a),
            (Value::Null, _) => {}
            (v, None) => out = Some(v),
            (_, Some(_)) => {}
        }
    }
    Ok(out.unwrap_or(Value::Null))
}

fn field<'a>(body: &'a Value, key: &str) -> Result<&'a str, Answer> {
    body[key]
        .as_str()
        .ok_or_else(|| Answer::error(400, format!("missing string field {key:?}")))
}

pub fn route(broker: &Broker, method: &Method, url: &str, body: &str) -> Answer {
    let path = url.split('?').next().unwrap_or("");
    let body: Value = if body.trim().is_empty() {
        Value::Null
    } else {
        match serde_json::from_str(body) {
            Ok(v) => v,
            Err(e) => return Answer::error(400, format!("body is not JSON: {e}")),
        }
    };
    match handle(broker, method, path, &body) {
        Ok(a) => a,
        Err(a) => a,
    }
}

fn ok(v: Value) -> Result<Answer, Answer> {
    Ok(Answer::json(200, v))
}

fn found(v: Value, what: &str) -> Result<Answer, Answer> {
    if v.is_null() {
        Err(Answer::error(404, format!("no such {what}")))
    } else {
        ok(v)
    }
}

fn clustered(broker: &Broker) -> Result<&crate::cluster::Reporter, Answer> {
    broker
        .cluster
        .as_ref()
        .ok_or_else(|| Answer::error(404, "this node is not in a cluster"))
}

/// An operator's change to the membership, carried out by the cluster thread.
fn cluster_op(broker: &Broker, op: crate::cluster::Admin) -> Result<Answer, Answer> {
    match clustered(broker)?.admin(op) {
        Ok(done) => ok(json!({ "done": done })),
        Err(e) => Err(Answer::error(409, e)),
    }
}

fn handle(broker: &Broker, method: &Method, path: &str, body: &Value) -> Result<Answer, Answer> {
    let h = &broker.handle;
    let fail = |e: String| Answer::error(500, e);
    let rest = path.strip_prefix("/api/v1/").unwrap_or(path);
    match (method, rest) {
        (Method::Get, "/metrics") => Ok(Answer::text(
            200,
            "text/plain; version=0.0.4",
            crate::metrics::render(broker),
        )),
        (Method::Get, "alarms") => ok(broker.shared.alarms.json()),
        (Method::Get, "health") => ok(json!({ "status": "ok" })),
        (Method::Get, "cluster") => {
            ok(serde_json::to_value(clustered(broker)?.summary())
                .map_err(|e| fail(e.to_string()))?)
        }
        (Method::Post, "cluster/join") => {
            let seed = body["seed"].as_str().unwrap_or_default().to_string();
            if seed.is_empty() {
                return Err(Answer::error(
                    400,
                    "a seed is needed: {\"seed\": \"host:port\"}",
                ));
            }
            cluster_op(broker, crate::cluster::Admin::Join(seed))
        }
        (Method::Post, "cluster/leave") => cluster_op(broker, crate::cluster::Admin::Leave),
        (Method::Delete, p) if p.starts_with("cluster/nodes/") => {
            let name = decode(&p["cluster/nodes/".len()..]);
            cluster_op(broker, crate::cluster::Admin::Remove(name))
        }
        (Method::Get, "status") => ok(status(broker).map_err(fail)?),
        (Method::Get, "stats") => ok(super::counters::stats(broker)),
        (Method::Get, "config") => ok(redacted(
            serde_json::to_value(&*broker.config()).map_err(|e| fail(e.to_string()))?,
        )),
        (Method::Get, "clients") => ok(merged(h.ask_all(|| Request::Clients(None))).map_err(fail)?),
        (Method::Get, p) if p.starts_with("clients/") => {
            let id = decode(&p["clients/".len()..]);
            found(
                merged(h.ask_all(|| Request::Clients(Some(id.clone())))).map_err(fail)?,
                "client",
            )
        }
        (Method::Delete, p) if p.starts_with("clients/") => {
            let id = decode(&p["clients/".len()..]);
            found(
                merged(h.ask_all(|| Request::Kick(id.clone()))).map_err(fail)?,
                "client",
            )
        }
        (Method::Get, "subscriptions") => {
            ok(merged(h.ask_all(|| Request::Subscriptions(None))).map_err(fail)?)
        }
        (Method::Get, p) if p.starts_with("subscriptions/") => {
            let id = decode(&p["subscriptions/".len()..]);
            ok(merged(h.ask_all(|| Request::Subscriptions(Some(id.clone())))).map_err(fail)?)
        }
        (Method::Post, "subscribe") => {
            let (client, filter) = (
                field(body, "clientid")?.to_string(),
                field(body, "topic")?.to_string(),
            );
            let qos = body["qos"].as_u64().unwrap_or(0).min(255) as u8;
            found(
                merged(h.ask_all(|| Request::Subscribe {
                    client: client.clone(),
                    filter: filter.clone(),
                    qos,
                }))
                .map_err(|e| Answer::error(400, e))?,
                "client",
            )
        }
        (Method::Post, "unsubscribe") => {
            let (client, filter) = (
                field(body, "clientid")?.to_string(),
                field(body, "topic")?.to_string(),
            );
            found(
                merged(h.ask_all(|| Request::Unsubscribe {
                    client: client.clone(),
                    filter: filter.clone(),
                }))
                .map_err(fail)?,
                "client",
            )
        }
        (Method::Get, "topics") => {
            let mut all: Vec<Value> = match merged(h.ask_all(|| Request::Topics)).map_err(fail)? {
                Value::Array(a) => a,
                _ => Vec::new(),
            };
            all.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            all.dedup();
            ok(Value::Array(all))
        }
        (Method::Get, "retained") => ok(h.ask(0, Request::Retained(None)).map_err(fail)?),
        (Method::Get, p) if p.starts_with("retained/") => {
            let topic = decode(&p["retained/".len()..]);
            let v = h.ask(0, Request::Retained(Some(topic))).map_err(fail)?;
            match v {
                Value::Array(mut a) if !a.is_empty() => ok(a.swap_remove(0)),
                _ => Err(Answer::error(404, "no such retained message")),
            }
        }
        (Method::Delete, "retained") => clean(broker, None),
        (Method::Delete, p) if p.starts_with("retained/") => {
            clean(broker, Some(decode(&p["retained/".len()..])))
        }
        (Method::Get, "banned") => ok(h.ask(0, Request::Banned).map_err(fail)?),
        (Method::Post, "banned") => ok(h.ask(0, Request::Ban(ban_of(body)?)).map_err(fail)?),
        (Method::Delete, p) if p.starts_with("banned/") => {
            let (kind, value) = p["banned/".len()..]
                .split_once('/')
                .ok_or_else(|| Answer::error(400, "banned/KIND/VALUE".to_string()))?;
            let kind = BanKind::parse(kind)
                .ok_or_else(|| Answer::error(400, format!("no ban kind {kind:?}")))?;
            found(
                h.ask(0, Request::Unban(kind, decode(value)))
                    .map_err(fail)?,
                "ban",
            )
        }
        (Method::Get, "delayed") => {
            let mut all = merged(h.ask_all(|| Request::Delayed)).map_err(fail)?;
            if let Value::Array(rows) = &mut all {
                rows.sort_by_key(|r| r["publish_at_ms"].as_u64());
            }
            ok(all)
        }
        (Method::Delete, p) if p.starts_with("delayed/") => {
            let id = decode(&p["delayed/".len()..]);
            found(
                merged(h.ask_all(|| Request::CancelDelayed(id.clone()))).map_err(fail)?,
                "delayed publish",
            )
        }
        (Method::Post, "reload") => match broker.reload() {
            Ok(summary) => ok(json!({ "reloaded": true, "auth": summary })),
            Err(e) => Err(Answer::error(400, e)),
        },
        (Method::Get, "log/level") => ok(json!({ "level": broker.log.level() })),
        (Method::Put, "log/level") => {
            let level = field(body, "level")?;
            broker
                .log
                .set_level(level)
                .map_err(|e| Answer::error(400, e))?;
            ok(json!({ "level": level }))
        }
        (Method::Get, "trace") => ok(json!(broker
            .trace
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default())),
        (Method::Post, "trace") => {
            let (kind, value) = (field(body, "kind")?, field(body, "value")?.to_string());
            let on = body["on"].as_bool().unwrap_or(true);
            let mut set = broker.trace.lock().map(|t| t.clone()).unwrap_or_default();
            let list = match kind {
                "client" => &mut set.clients,
                "topic" => &mut set.topics,
                _ => return Err(Answer::error(400, "kind must be client or topic")),
            };
            list.retain(|v| *v != value);
            if on {
                list.push(value);
            }
            broker.set_trace(set.clone()).map_err(fail)?;
            ok(json!(set))
        }
        _ => Err(Answer::error(404, format!("no endpoint {method} {path}"))),
    }
}

/// Whether a configuration key holds a secret (a password or token, not a file's path).
fn secret_key(key: &str) -> bool {
    ["password", "token", "secret"]
        .iter()
        .any(|s| key == *s || key.ends_with(&format!("_{s}")))
}

/// The configuration with every secret's value replaced, so the dashboard can show it.
fn redacted(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Null => Value::Null,
                        _ if secret_key(&k) => json!("(hidden)"),
                        v => redacted(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(redacted).collect()),
        v => v,
    }
}

/// A ban from the API's JSON body.
fn ban_of(body: &Value) -> Result<Ban, Answer> {
    let kind = field(body, "as")?;
    let kind = BanKind::parse(kind).ok_or_else(|| {
        Answer::error(
            400,
            format!("\"as\" is clientid, username or peerhost, not {kind:?}"),
        )
    })?;
    let at = crate::store::record::wall_now();
    let until = match &body["duration"] {
        Value::Null => None,
        d => {
            let secs = d
                .as_u64()
                .ok_or_else(|| Answer::error(400, "\"duration\" is whole seconds".to_string()))?;
            Some(at.saturating_add(secs.saturating_mul(1000)))
        }
    };
    let reason = body["reason"].as_str().unwrap_or("");
    Ban::new(kind, field(body, "who")?, reason, at, until).map_err(|e| Answer::error(400, e))
}

fn clean(broker: &Broker, topic: Option<String>) -> Result<Answer, Answer> {
    let replies = broker
        .handle
        .ask_all(|| Request::CleanRetained(topic.clone()));
    let removed = replies
        .into_iter()
        .next()
        .transpose()
        .map_err(|e| Answer::error(500, e))?
        .map_or(0, |v| v["removed"].as_i64().unwrap_or(0));
    ok(json!({ "removed": removed }))
}

pub fn status(broker: &Broker) -> Result<Value, String> {
    let shards: Vec<Value> = broker
        .handle
        .ask_all(|| Request::Status)
        .into_iter()
        .collect::<Result<_, _>>()?;
    let sum = |k: &str| shards.iter().filter_map(|s| s[k].as_i64()).sum::<i64>();
    let g = &broker.shared;
    let (msgs_in, msgs_out) = g.messages();
    let cfg = broker.config();
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node": cfg.broker.node_name,
        "uptime_secs": g.started.elapsed().as_secs(),
        "shards": broker.handle.shards(),
        "driver": broker.driver,
        "listeners": broker.bound.iter().map(|(n, a)| json!({"name": n, "bind": a.to_string()})).collect::<Vec<_>>(),
        "connections": sum("connections"),
        "sessions": sum("sessions"),
        "subscriptions": sum("subscriptions"),
        "retained": shards.first().and_then(|s| s["retained"].as_i64()).unwrap_or(0),
        "messages_in": msgs_in,
        "messages_out": msgs_out,
        "msg_in_per_sec": g.rate_in.get(),
        "msg_out_per_sec": g.rate_out.get(),
        "store": store_json(&g.store, cfg.durability.mode.name(), &cfg.broker.data_dir),
        "shard_status": shards,
    }))
}

/// The store as `ctl status` shows it: size, lag, last sync, what it wrote and restored.
fn store_json(st: &crate::store::StoreStats, mode: &str, dir: &std::path::Path) -> Value {
    use crate::store::StoreStats as S;
    let last_sync = S::get(&st.last_sync_ms);
    let ago = crate::store::record::wall_now().saturating_sub(last_sync);
    json!({
        "mode": mode,
        "dir": dir.join("store").display().to_string(),
        "disk_bytes": S::get(&st.disk_bytes),
        "lag_batches": S::get(&st.lag),
        "last_sync_ms_ago": (last_sync > 0).then_some(ago),
        "batches": S::get(&st.batches),
        "records": S::get(&st.records),
        "written_bytes": S::get(&st.bytes),
        "syncs": S::get(&st.syncs),
        "failures": S::get(&st.failures),
        "restored": {
            "sessions": S::get(&st.restored_sessions),
            "messages": S::get(&st.restored_messages),
            "retained": S::get(&st.restored_retained),
            "seconds": S::get(&st.restore_ms) as f64 / 1000.0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hidden_and_paths_kept() {
        let mut cfg = crate::config::Config::default();
        cfg.admin.password = Some("pw".into());
        cfg.admin.token = Some("tok".into());
        cfg.auth.password_file = Some("/etc/ringmq/passwd".into());
        let v = redacted(serde_json::to_value(&cfg).expect("config as JSON"));
        assert_eq!(v["admin"]["password"], "(hidden)");
        assert_eq!(v["admin"]["token"], "(hidden)");
        assert_eq!(v["admin"]["username"], Value::Null);
        assert_eq!(v["auth"]["password_file"], "/etc/ringmq/passwd");
        assert!(!v.to_string().contains("\"pw\"") && !v.to_string().contains("tok\""));
    }
}
