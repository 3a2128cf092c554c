//! The admin HTTP API, on its own thread and port (default 127.0.0.1:18083), off the message
//! path: `ringmq ctl` talks to it, Prometheus scrapes `/metrics` from it. Requests are answered
//! one at a time from the shards' control queues. Beyond loopback it requires a bearer token
//! or basic-auth credentials (checked by `config`), and it checks them on loopback too when set.

mod api;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use tiny_http::{Header, Response, Server};

use crate::broker::Broker;

/// An answer: HTTP status and body (JSON, or Prometheus text).
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub json: bool,
}

impl Answer {
    pub fn json(status: u16, v: serde_json::Value) -> Answer {
        Answer {
            status,
            body: v.to_string(),
            json: true,
        }
    }

    pub fn error(status: u16, message: impl Into<String>) -> Answer {
        Answer::json(status, serde_json::json!({ "error": message.into() }))
    }
}

/// Binds the API and serves it on a new thread; returns the bound address.
pub fn start(broker: Arc<Broker>) -> Result<SocketAddr, String> {
    let bind = broker.config().admin.bind;
    let server =
        Server::http(bind).map_err(|e| format!("cannot bind the admin API on {bind}: {e}"))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or("the admin API is not on an IP address")?;
    std::thread::Builder::new()
        .name("ringmq-admin".into())
        .spawn(move || {
            for mut req in server.incoming_requests() {
                let answer = if authorized(&broker, &req) {
                    let mut body = String::new();
                    let _ = req.as_reader().take(1 << 20).read_to_string(&mut body);
                    api::route(&broker, req.method(), req.url(), &body)
                } else {
                    Answer::error(
                        401,
                        "unauthorized: use admin.token (Bearer) or admin.username/password (Basic)",
                    )
                };
                let ctype = if answer.json {
                    "application/json"
                } else {
                    "text/plain; version=0.0.4"
                };
                let mut resp = Response::from_string(answer.body).with_status_code(answer.status);
                if let Ok(h) = Header::from_bytes("Content-Type", ctype) {
                    resp = resp.with_header(h);
                }
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(addr)
}

fn authorized(broker: &Broker, req: &tiny_http::Request) -> bool {
    let cfg = broker.config();
    let a = &cfg.admin;
    if a.token.is_none() && a.username.is_none() {
        return true;
    }
    let Some(value) = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().to_string())
    else {
        return false;
    };
    if let (Some(token), Some(given)) = (&a.token, value.strip_prefix("Bearer ")) {
        return given.trim() == token;
    }
    if let (Some(user), Some(pass), Some(given)) =
        (&a.username, &a.password, value.strip_prefix("Basic "))
    {
        let want = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        return given.trim() == want;
    }
    false
}
