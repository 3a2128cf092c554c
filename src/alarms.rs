//! Alarms as EMQX raises them: `high_system_memory_usage` (resident memory over
//! `overload.memory_budget_mb`), `overload` (a shard's event loop later than
//! `overload.max_loop_lag_ms`) and `slow_subscriber`, one per client (deliveries to it dropped
//! because its queue was full; like EMQX's per-connection `conn_congestion`). The stats thread
//! evaluates them once a second from what the shards report (it never asks a shard); an alarm is
//! raised when its condition holds and cleared only after `CLEAR_SWEEPS` sweeps in a row below
//! its clear level (hysteresis: memory must fall under 80 % of the budget). Each change is
//! queued as a `$SYS/brokers/<node>/alarms/activate|deactivate` event that shard 0 publishes;
//! cleared alarms are kept in a bounded history. At most `MAX_CLIENT_ALARMS` client alarms are
//! active at once: past that, a slow client is only counted.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use bytestring::ByteString;
use serde_json::{json, Value};

use crate::stats::Shared;

/// Cleared alarms kept for the API.
const HISTORY: usize = 100;
/// Events waiting for shard 0 (one per change, so a few at most unless shard 0 stalls).
const MAX_EVENTS: usize = 100;
/// Sweeps in a row below the clear level before an alarm is cleared.
const CLEAR_SWEEPS: u32 = 3;
/// Slow-subscriber alarms active at once.
const MAX_CLIENT_ALARMS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Memory,
    Overload,
    SlowSubscriber,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "high_system_memory_usage",
            Kind::Overload => "overload",
            Kind::SlowSubscriber => "slow_subscriber",
        }
    }
}

/// What one sweep found for an alarm.
enum Level {
    /// The condition holds: raise (or keep) the alarm with this message.
    Over(String),
    /// Between the clear and the raise levels: no change.
    Between,
    /// Below the clear level.
    Under,
}

struct Alarm {
    kind: Kind,
    /// The client it is about (slow subscribers), if any.
    client: Option<ByteString>,
    message: String,
    since: u64,
    /// Sweeps in a row found under the clear level.
    clean: u32,
}

#[derive(Default)]
struct State {
    active: Vec<Alarm>,
    history: VecDeque<Value>,
    /// `(topic suffix, JSON payload)` for shard 0 to publish.
    events: VecDeque<(&'static str, String)>,
}

/// The broker's alarms, shared by the stats thread, shard 0 and the admin API.
#[derive(Default)]
pub struct Alarms(Mutex<State>);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Alarms {
    /// One sweep (the stats thread, once a second, with the resident memory it read).
    pub fn sweep(&self, shared: &Shared, overload: &crate::config::OverloadConfig, rss: u64) {
        let budget = overload.memory_budget_bytes();
        let lagging = shared.sum(|s| &s.overloaded);
        let mut slow: AHashMap<ByteString, u64> = AHashMap::new();
        for stats in shared.stats.iter() {
            for (client, n) in stats.take_slow() {
                *slow.entry(client).or_default() += n;
            }
        }
        let Ok(mut st) = self.0.lock() else { return };
        let memory = if budget > 0 && rss > budget {
            Level::Over(format!(
                "resident memory {} MiB over the budget of {} MiB",
                rss >> 20,
                budget >> 20
            ))
        } else if budget > 0 && rss > budget / 5 * 4 {
            Level::Between
        } else {
            Level::Under
        };
        st.apply(Kind::Memory, None, memory);
        let lag = if lagging > 0 {
            Level::Over(format!(
                "{lagging} shard(s) with event loop lag over {} ms",
                overload.max_loop_lag_ms
            ))
        } else {
            Level::Under
        };
        st.apply(Kind::Overload, None, lag);
        let quiet: Vec<ByteString> = st
            .active
            .iter()
            .filter_map(|a| a.client.clone())
            .filter(|c| !slow.contains_key(c))
            .collect();
        for client in quiet {
            st.apply(Kind::SlowSubscriber, Some(client), Level::Under);
        }
        for (client, n) in slow {
            let message =
                format!("{n} deliveries to {client} dropped in the last second: its queue is full");
            st.apply(Kind::SlowSubscriber, Some(client), Level::Over(message));
        }
    }

    /// The events queued since the last call, oldest first.
    pub fn take_events(&self) -> Vec<(&'static str, String)> {
        self.0
            .lock()
            .map(|mut st| st.events.drain(..).collect())
            .unwrap_or_default()
    }

    /// Alarms raised now.
    pub fn active_count(&self) -> usize {
        self.0.lock().map_or(0, |st| st.active.len())
    }

    /// `{"active": [...], "history": [...]}` for the API (history newest first).
    pub fn json(&self) -> Value {
        let Ok(st) = self.0.lock() else {
            return Value::Null;
        };
        let active: Vec<Value> = st.active.iter().map(Alarm::json).collect();
        json!({ "active": active, "history": st.history })
    }
}

impl Alarm {
    fn json(&self) -> Value {
        let mut v =
            json!({ "name": self.kind.name(), "message": self.message, "since": self.since });
        if let Some(client) = &self.client {
            v["client_id"] = json!(client);
        }
        v
    }
}

impl State {
    fn apply(&mut self, kind: Kind, client: Option<ByteString>, level: Level) {
        let at = self
            .active
            .iter()
            .position(|a| a.kind == kind && a.client == client);
        match (level, at) {
            (Level::Over(message), Some(i)) => {
                let alarm = &mut self.active[i];
                alarm.message = message;
                alarm.clean = 0;
            }
            (Level::Over(message), None) => {
                let clients = self.active.iter().filter(|a| a.client.is_some()).count();
                if client.is_some() && clients >= MAX_CLIENT_ALARMS {
                    return;
                }
                let alarm = Alarm {
                    kind,
                    client,
                    message,
                    since: unix_now(),
                    clean: 0,
                };
                tracing::warn!(alarm = kind.name(), client = alarm.client.as_deref(), message = %alarm.message, "alarm raised");
                self.event("alarms/activate", alarm.json());
                self.active.push(alarm);
            }
            (Level::Between, Some(i)) => self.active[i].clean = 0,
            (Level::Under, Some(i)) => {
                self.active[i].clean += 1;
                if self.active[i].clean >= CLEAR_SWEEPS {
                    let alarm = self.active.remove(i);
                    let mut past = alarm.json();
                    past["until"] = json!(unix_now());
                    tracing::info!(
                        alarm = kind.name(),
                        client = alarm.client.as_deref(),
                        "alarm cleared"
                    );
                    self.event("alarms/deactivate", past.clone());
                    if self.history.len() == HISTORY {
                        self.history.pop_back();
                    }
                    self.history.push_front(past);
                }
            }
            (_, None) => {}
        }
    }

    fn event(&mut self, suffix: &'static str, payload: Value) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back((suffix, payload.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_then_cleared_after_clean_sweeps_only() {
        let mut st = State::default();
        st.apply(Kind::Overload, None, Level::Over("late".into()));
        assert_eq!(st.active.len(), 1);
        st.apply(Kind::Overload, None, Level::Under);
        st.apply(Kind::Overload, None, Level::Between);
        for _ in 1..CLEAR_SWEEPS {
            st.apply(Kind::Overload, None, Level::Under);
        }
        assert_eq!(
            st.active.len(),
            1,
            "a sweep between the levels restarts the count"
        );
        st.apply(Kind::Overload, None, Level::Under);
        assert!(st.active.is_empty());
        assert_eq!(st.history[0]["name"], "overload");
        assert!(st.history[0]["until"].is_u64());
        let kinds: Vec<_> = st.events.iter().map(|e| e.0).collect();
        assert_eq!(kinds, ["alarms/activate", "alarms/deactivate"]);
    }

    #[test]
    fn history_is_bounded() {
        let mut st = State::default();
        for _ in 0..HISTORY + 5 {
            st.apply(Kind::Overload, None, Level::Over("late".into()));
            for _ in 0..CLEAR_SWEEPS {
                st.apply(Kind::Overload, None, Level::Under);
            }
        }
        assert_eq!(st.history.len(), HISTORY);
        assert_eq!(st.events.len(), MAX_EVENTS);
    }

    #[test]
    fn one_slow_subscriber_alarm_per_client_and_no_more_than_the_bound() {
        let mut st = State::default();
        let slow = |n: usize| Some(ByteString::from(format!("c{n}")));
        for n in 0..MAX_CLIENT_ALARMS + 10 {
            st.apply(Kind::SlowSubscriber, slow(n), Level::Over("full".into()));
        }
        st.apply(Kind::SlowSubscriber, slow(0), Level::Over("still".into()));
        assert_eq!(st.active.len(), MAX_CLIENT_ALARMS);
        st.apply(Kind::Overload, None, Level::Over("late".into()));
        assert_eq!(
            st.active.len(),
            MAX_CLIENT_ALARMS + 1,
            "broker alarms are not bounded by clients"
        );
        for _ in 0..CLEAR_SWEEPS {
            st.apply(Kind::SlowSubscriber, slow(1), Level::Under);
        }
        assert_eq!(st.history[0]["client_id"], "c1");
        assert_eq!(st.active[0].json()["message"], "still");
    }
}
