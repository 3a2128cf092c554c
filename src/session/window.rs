//! A session's outbound QoS 1/2 window: the flows sent and not yet ended, by packet id, in the
//! order they were sent.
//!
//! Clients acknowledge in that order (MQTT-4.6.0-2 to -4), so the flow an acknowledgement ends
//! is nearly always the oldest: it is looked for from the front, and taking the front moves
//! nothing. (A `BTreeMap` keyed by packet id shifted every younger flow, about 100 bytes each,
//! at every in-order acknowledgement.) An acknowledgement out of order costs a scan of the
//! window, whose size the operator bounds (`mqtt.max_inflight`). Send order is also the order
//! a resumed session must resend in, which packet-id order is not once the ids wrap.
//!
//! A window that was never used holds no allocation and takes 8 bytes of the session: most
//! sessions are idle, and most idle sessions have nothing in flight. One that empties keeps
//! its room while its connection is busy (a window that empties between two messages would
//! otherwise allocate and grow again for the next, about 400 instructions); the shard lets
//! it go when the connection goes idle or away ([`Window::trim`]).

use std::collections::VecDeque;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Inflight;

type Flows = VecDeque<(u16, Inflight)>;

#[derive(Debug, Default)]
pub struct Window {
    /// None while empty.
    flows: Option<Box<Flows>>,
}

impl Window {
    pub fn len(&self) -> usize {
        self.flows.as_ref().map_or(0, |f| f.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lets an empty window's room go.
    pub fn trim(&mut self) {
        if self.is_empty() {
            self.flows = None;
        }
    }

    /// Adds a flow sent after every other one, under an id the window does not hold (the
    /// session gives out only such ids).
    pub fn push(&mut self, pid: u16, flow: Inflight) {
        debug_assert!(!self.contains(pid), "packet id {pid} is in flight");
        self.flows
            .get_or_insert_with(Box::default)
            .push_back((pid, flow));
    }

    /// Adds a flow read back (from the store, or from another node) after those read before
    /// it, replacing one already under `pid` (read back twice).
    pub fn restore(&mut self, pid: u16, flow: Inflight) {
        self.remove(pid);
        self.push(pid, flow);
    }

    /// Where flow `pid` is. The oldest is looked at first, since acknowledgements come in
    /// send order, then the newest, since a flow is written from the window right after it
    /// enters it, then the rest.
    fn position(&self, pid: u16) -> Option<usize> {
        let flows = self.flows.as_ref()?;
        let (Some((front, _)), Some((back, _))) = (flows.front(), flows.back()) else {
            return None;
        };
        if *front == pid {
            Some(0)
        } else if *back == pid {
            Some(flows.len() - 1)
        } else {
            flows.iter().position(|(p, _)| *p == pid)
        }
    }

    pub fn contains(&self, pid: u16) -> bool {
        self.position(pid).is_some()
    }

    pub fn get(&self, pid: u16) -> Option<&Inflight> {
        let i = self.position(pid)?;
        self.flows.as_ref().map(|f| &f[i].1)
    }

    pub fn get_mut(&mut self, pid: u16) -> Option<&mut Inflight> {
        let i = self.position(pid)?;
        self.flows.as_mut().map(|f| &mut f[i].1)
    }

    /// Ends the flow `pid`.
    pub fn remove(&mut self, pid: u16) -> Option<Inflight> {
        self.remove_if(pid, |_| true)
    }

    /// Ends the flow `pid` if `end` says so of it (one lookup for both).
    pub fn remove_if(&mut self, pid: u16, end: impl FnOnce(&Inflight) -> bool) -> Option<Inflight> {
        let i = self.position(pid)?;
        let flows = self.flows.as_mut()?;
        if !end(&flows[i].1) {
            return None;
        }
        // The oldest, as nearly always: `pop_front` skips the general removal's arithmetic.
        let (_, flow) = if i == 0 {
            flows.pop_front()?
        } else {
            flows.remove(i)?
        };
        Some(flow)
    }

    /// The packet id sent last.
    pub fn last_pid(&self) -> Option<u16> {
        self.flows.as_ref()?.back().map(|(p, _)| *p)
    }

    /// The flows in send order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Inflight)> {
        let flows = self.flows.iter().flat_map(|f| f.iter());
        flows.map(|(p, f)| (*p, f))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u16, &mut Inflight)> {
        let flows = self.flows.iter_mut().flat_map(|f| f.iter_mut());
        flows.map(|(p, f)| (*p, f))
    }

    /// Keeps the flows `keep` says yes to, in their order.
    pub fn retain(&mut self, mut keep: impl FnMut(u16, &mut Inflight) -> bool) {
        if let Some(flows) = self.flows.as_mut() {
            flows.retain_mut(|(p, f)| keep(*p, f));
        }
    }
}

impl IntoIterator for Window {
    type Item = (u16, Inflight);
    type IntoIter = std::iter::Flatten<std::option::IntoIter<Flows>>;

    /// The flows in send order.
    fn into_iter(self) -> Self::IntoIter {
        self.flows.map(|f| *f).into_iter().flatten()
    }
}

/// A sequence of (packet id, flow) in send order.
impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let flows = Vec::<(u16, Inflight)>::deserialize(d)?;
        let mut w = Window::default();
        for (pid, flow) in flows {
            w.restore(pid, flow);
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::session::tests::delivery;
    use crate::session::OutState;

    fn flow() -> Inflight {
        Inflight {
            delivery: delivery(QoS::AtLeastOnce),
            state: OutState::Published,
        }
    }

    fn pids(w: &Window) -> Vec<u16> {
        w.iter().map(|(p, _)| p).collect()
    }

    /// Send order is kept whatever the ids (they wrap), the front and the middle are taken
    /// out, and an empty window keeps its allocation until trimmed.
    #[test]
    fn flows_stay_in_send_order() {
        let mut w = Window::default();
        for pid in [65534, 65535, 1, 2] {
            w.push(pid, flow());
        }
        assert_eq!(pids(&w), [65534, 65535, 1, 2]);
        assert_eq!(w.last_pid(), Some(2));
        assert!(w.remove(65534).is_some());
        assert!(w.remove(1).is_some());
        assert!(w.remove(1).is_none(), "ended once");
        assert_eq!(pids(&w), [65535, 2]);
        assert!(w.contains(2) && !w.contains(65534));
        w.get_mut(2).expect("in flight").state = OutState::Released;
        assert_eq!(w.get(2).map(|f| f.state), Some(OutState::Released));
        w.restore(65535, flow());
        assert_eq!(
            pids(&w),
            [2, 65535],
            "a restored id already there is replaced"
        );
        w.retain(|p, _| p != 2);
        assert_eq!(w.len(), 1);
        assert!(w.remove(65535).is_some());
        assert!(w.is_empty() && w.flows.is_some());
        w.push(3, flow());
        w.trim();
        assert!(w.flows.is_some(), "a window in use is not trimmed");
        assert!(w.remove(3).is_some());
        w.trim();
        assert!(w.is_empty() && w.flows.is_none());
        assert_eq!(std::mem::size_of::<Window>(), 8);
    }

    #[test]
    fn serializes_in_send_order() {
        let mut w = Window::default();
        for pid in [9, 3, 7] {
            w.push(pid, flow());
        }
        let back: Window =
            serde_json::from_str(&serde_json::to_string(&w).expect("to json")).expect("from json");
        assert_eq!(pids(&back), [9, 3, 7]);
        let taken: Vec<u16> = back.into_iter().map(|(p, _)| p).collect();
        assert_eq!(taken, [9, 3, 7]);
    }
}
