//! `ringmq ctl`: the admin API from the command line. Each command is one HTTP request; the
//! answer prints as a table (lists), `key: value` lines (objects), or the JSON itself with
//! `--json`. An error answer prints its message and exits non-zero.

use std::net::{Ipv4Addr, SocketAddr};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use crate::cli::{
    BannedCmd, ClientsCmd, ClusterCmd, ConfigCmd, CtlArgs, CtlCommand, DelayedCmd, LogCmd,
    RetainedCmd, SubscriptionsCmd, TopicsCmd, TraceCmd,
};

/// One admin API request: the path under `/api/v1/`, and the JSON body.
pub enum Call {
    Get(String),
    Delete(String),
    Post(String, Value),
    Put(String, Value),
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn call_for(cmd: &CtlCommand) -> Call {
    use Call::*;
    match cmd {
        CtlCommand::Status => Get("status".into()),
        CtlCommand::Alarms => Get("alarms".into()),
        CtlCommand::Clients(ClientsCmd::List) => Get("clients".into()),
        CtlCommand::Clients(ClientsCmd::Show { client_id }) => {
            Get(format!("clients/{}", enc(client_id)))
        }
        CtlCommand::Clients(ClientsCmd::Kick { client_id }) => {
            Delete(format!("clients/{}", enc(client_id)))
        }
        CtlCommand::Subscriptions(SubscriptionsCmd::List) => Get("subscriptions".into()),
        CtlCommand::Subscriptions(SubscriptionsCmd::Show { client_id }) => {
            Get(format!("subscriptions/{}", enc(client_id)))
        }
        CtlCommand::Subscriptions(SubscriptionsCmd::Add {
            client_id,
            filter,
            qos,
        }) => Post(
            "subscribe".into(),
            json!({ "clientid": client_id, "topic": filter, "qos": qos }),
        ),
        CtlCommand::Subscriptions(SubscriptionsCmd::Del { client_id, filter }) => Post(
            "unsubscribe".into(),
            json!({ "clientid": client_id, "topic": filter }),
        ),
        CtlCommand::Topics(TopicsCmd::List) => Get("topics".into()),
        CtlCommand::Retained(RetainedCmd::List) => Get("retained".into()),
        CtlCommand::Retained(RetainedCmd::Show { topic }) => {
            Get(format!("retained/{}", enc(topic)))
        }
        CtlCommand::Retained(RetainedCmd::Clean { topic: None }) => Delete("retained".into()),
        CtlCommand::Retained(RetainedCmd::Clean { topic: Some(t) }) => {
            Delete(format!("retained/{}", enc(t)))
        }
        CtlCommand::Banned(BannedCmd::List) => Get("banned".into()),
        CtlCommand::Banned(BannedCmd::Add {
            kind,
            value,
            reason,
            duration,
        }) => Post(
            "banned".into(),
            json!({ "as": kind, "who": value, "reason": reason, "duration": duration }),
        ),
        CtlCommand::Banned(BannedCmd::Del { kind, value }) => {
            Delete(format!("banned/{}/{}", enc(kind), enc(value)))
        }
        CtlCommand::Delayed(DelayedCmd::List) => Get("delayed".into()),
        CtlCommand::Delayed(DelayedCmd::Cancel { id }) => Delete(format!("delayed/{}", enc(id))),
        CtlCommand::Config(ConfigCmd::Reload) => Post("reload".into(), Value::Null),
        CtlCommand::Log(LogCmd::Level { level: None }) => Get("log/level".into()),
        CtlCommand::Log(LogCmd::Level { level: Some(l) }) => {
            Put("log/level".into(), json!({ "level": l }))
        }
        CtlCommand::Trace(TraceCmd::Client { client_id, off }) => Post(
            "trace".into(),
            json!({ "kind": "client", "value": client_id, "on": !off }),
        ),
        CtlCommand::Trace(TraceCmd::Topic { filter, off }) => Post(
            "trace".into(),
            json!({ "kind": "topic", "value": filter, "on": !off }),
        ),
        CtlCommand::Trace(TraceCmd::List) => Get("trace".into()),
        CtlCommand::Cluster(ClusterCmd::Status) => Get("cluster".into()),
        CtlCommand::Cluster(ClusterCmd::Join { seed }) => {
            Post("cluster/join".into(), json!({ "seed": seed }))
        }
        CtlCommand::Cluster(ClusterCmd::Leave) => Post("cluster/leave".into(), Value::Null),
        CtlCommand::Cluster(ClusterCmd::Remove { node }) => {
            Delete(format!("cluster/nodes/{}", enc(node)))
        }
    }
}

/// Where to connect to reach a socket bound to `bind`: loopback for an unspecified address.
pub fn dial_address(bind: SocketAddr) -> SocketAddr {
    if bind.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, bind.port()))
    } else {
        bind
    }
}

/// The admin API's base URL for a configuration's `admin.bind`, or the default one.
pub fn base_url(cfg: Option<&crate::config::Config>) -> String {
    let bind = cfg.map_or_else(
        || SocketAddr::from((Ipv4Addr::LOCALHOST, 18083)),
        |c| dial_address(c.admin.bind),
    );
    format!("http://{bind}")
}

/// Sends one request to the admin API at `base`; the answer's status and JSON (a body that is
/// not JSON comes back as a string). The error says the API could not be reached.
pub fn request(base: &str, token: Option<&str>, call: Call) -> Result<(u16, Value), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let url = |p: &str| format!("{}/api/v1/{p}", base.trim_end_matches('/'));
    let auth = token.map(|t| format!("Bearer {t}"));
    let authed = |r: ureq::RequestBuilder<_>| match &auth {
        Some(a) => r.header("Authorization", a),
        None => r,
    };
    let json_body = |r: ureq::RequestBuilder<ureq::typestate::WithBody>, body: Value| {
        match &auth {
            Some(a) => r.header("Authorization", a),
            None => r,
        }
        .header("Content-Type", "application/json")
        .send(body.to_string())
    };
    let result = match call {
        Call::Get(p) => authed(agent.get(url(&p))).call(),
        Call::Delete(p) => authed(agent.delete(url(&p))).call(),
        Call::Post(p, body) => json_body(agent.post(url(&p)), body),
        Call::Put(p, body) => json_body(agent.put(url(&p)), body),
    };
    let mut resp = result.map_err(|e| format!("cannot reach the admin API at {base}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("bad answer from {base}: {e}"))?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, v))
}

/// Runs one `ctl` command; the error is what to print.
pub fn run(args: CtlArgs) -> Result<(), String> {
    let file = args.config.clone().or_else(crate::config::system_config);
    let cfg = match file {
        Some(p) => Some(crate::config::Config::load(&p).map_err(|e| e.to_string())?),
        None => None,
    };
    let base = args.url.clone().unwrap_or_else(|| base_url(cfg.as_ref()));
    let token = args
        .token
        .clone()
        .or_else(|| cfg.as_ref().and_then(|c| c.admin.token.clone()));
    let (status, v) = request(&base, token.as_deref(), call_for(&args.command))?;
    if status >= 400 {
        return Err(v["error"]
            .as_str()
            .map_or_else(|| v.to_string(), str::to_string));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", human(&v));
    }
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Arrays of objects as aligned tables, objects as `key: value` lines.
fn human(v: &Value) -> String {
    match v {
        Value::Array(rows) if rows.iter().all(Value::is_object) && !rows.is_empty() => {
            let cols: Vec<String> = rows[0]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| cols.iter().map(|c| cell(&r[c])).collect())
                .collect();
            let widths: Vec<usize> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].len())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |r: &[String]| -> String {
                r.iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
                    + "\n"
            };
            let mut out = line(&cols);
            for r in &cells {
                out += &line(r);
            }
            out
        }
        Value::Array(items) if items.is_empty() => "(none)\n".into(),
        Value::Array(items) => items.iter().map(|i| cell(i) + "\n").collect(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| match v {
                Value::Array(_) | Value::Object(_) => format!("{k}:\n{}", indent(&human(v))),
                _ => format!("{k}: {}\n", cell(v)),
            })
            .collect(),
        other => cell(other) + "\n",
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}
