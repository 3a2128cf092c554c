//! The cluster's frames (handshake, forwarded publishes and sessions, their answers, consensus
//! requests and responses) decoded from arbitrary bytes, as a peer's connection delivers them:
//! decoding never panics, a session handed over turns back into a session without panicking,
//! and whatever decodes encodes to a frame that decodes to the same value.
#![no_main]

use std::fmt::Debug;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use ringmq::cluster::wire::{self, Back, Forward, Hello, Proof, Request, Response, Welcome};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `body` as a `T`; what decodes must survive a round trip unchanged.
fn round_trip<T: DeserializeOwned + Serialize + Debug>(body: &[u8]) -> Option<T> {
    let v: T = wire::decode(body).ok()?;
    let framed = wire::frame(&v).ok()?;
    let again: T = wire::decode(&framed[4..]).expect("a frame we wrote decodes");
    assert_eq!(format!("{v:?}"), format!("{again:?}"));
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.first_chunk::<4>() {
        if let Ok(n) = wire::frame_len(*header) {
            assert!(n <= wire::MAX_FRAME);
        }
    }
    round_trip::<Hello>(data);
    round_trip::<Welcome>(data);
    round_trip::<Proof>(data);
    round_trip::<Back>(data);
    round_trip::<Request>(data);
    round_trip::<Response>(data);
    if let Some(Forward::Session {
        client_id,
        moved: Some(moved),
        ..
    }) = round_trip::<Forward>(data)
    {
        let _ = moved.session(client_id.into(), Instant::now(), 0);
    }
});
