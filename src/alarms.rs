//! Alarms as EMQX raises them: `high_system_memory_usage` (resident memory over
//! `overload.memory_budget_mb`), `overload` (a shard's event loop later than
//! `overload.max_loop_lag_ms`) and `slow_subscriber` (deliveries dropped because a subscriber's
//! queue was full). The stats thread evaluates them once a second from the shared counters (it
//! never asks a shard); an alarm is raised when its condition holds and cleared only after
//! `CLEAR_SWEEPS` sweeps in a row below its clear level (hysteresis: memory must fall under 80 %
//! of the budget). Each change is queued as a `$SYS/brokers/<node>/alarms/activate|deactivate`
//! event that shard 0 publishes; cleared alarms are kept in a bounded history.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::stats::Shared;

/// Cleared alarms kept for the API.
const HISTORY: usize = 100;
/// Events waiting for shard 0 (one per change, so a few at most unless shard 0 stalls).
const MAX_EVENTS: usize = 100;
/// Sweeps in a row below the clear level before an alarm is cleared.
const CLEAR_SWEEPS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Memory,
    Overload,
    SlowSubscriber,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Memory, Kind::Overload, Kind::SlowSubscriber];

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
    /// Queue-full drops summed over shards at the last sweep.
    drops: i64,
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
        let drops = shared.sum(|s| &s.dropped_queue_full);
        let Ok(mut st) = self.0.lock() else { return };
        let new_drops = drops - std::mem::replace(&mut st.drops, drops);
        for kind in Kind::ALL {
            let level = match kind {
                Kind::Memory if budget > 0 && rss > budget => Level::Over(format!(
                    "resident memory {} MiB over the budget of {} MiB",
                    rss >> 20,
                    budget >> 20
                )),
                Kind::Memory if budget > 0 && rss > budget / 5 * 4 => Level::Between,
                Kind::Overload if lagging > 0 => Level::Over(format!(
                    "{lagging} shard(s) with event loop lag over {} ms",
                    overload.max_loop_lag_ms
                )),
                Kind::SlowSubscriber if new_drops > 0 => Level::Over(format!(
                    "{new_drops} deliveries dropped in the last second for full subscriber queues"
                )),
                _ => Level::Under,
            };
            st.apply(kind, level);
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
        json!({ "name": self.kind.name(), "message": self.message, "since": self.since })
    }
}

impl State {
    fn apply(&mut self, kind: Kind, level: Level) {
        let at = self.active.iter().position(|a| a.kind == kind);
        match (level, at) {
            (Level::Over(message), Some(i)) => {
                let alarm = &mut self.active[i];
                alarm.message = message;
                alarm.clean = 0;
            }
            (Level::Over(message), None) => {
                let alarm = Alarm {
                    kind,
                    message,
                    since: unix_now(),
                    clean: 0,
                };
                tracing::warn!(alarm = kind.name(), message = %alarm.message, "alarm raised");
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
                    tracing::info!(alarm = kind.name(), "alarm cleared");
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
        st.apply(Kind::Overload, Level::Over("late".into()));
        assert_eq!(st.active.len(), 1);
        st.apply(Kind::Overload, Level::Under);
        st.apply(Kind::Overload, Level::Between);
        for _ in 1..CLEAR_SWEEPS {
            st.apply(Kind::Overload, Level::Under);
        }
        assert_eq!(
            st.active.len(),
            1,
            "a sweep between the levels restarts the count"
        );
        st.apply(Kind::Overload, Level::Under);
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
            st.apply(Kind::SlowSubscriber, Level::Over("slow".into()));
            for _ in 0..CLEAR_SWEEPS {
                st.apply(Kind::SlowSubscriber, Level::Under);
            }
        }
        assert_eq!(st.history.len(), HISTORY);
        assert_eq!(st.events.len(), MAX_EVENTS);
    }
}
