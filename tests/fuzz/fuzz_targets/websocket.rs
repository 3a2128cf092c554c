//! The WebSocket upgrade parser and frame decoder on arbitrary bytes, fed in two pieces (as
//! two reads would): they must never panic, never hand out more MQTT bytes than arrived, and
//! decide the same whether the bytes come at once or split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmq::ws;

fn run(chunks: &[&[u8]]) -> (Result<bool, ws::WsError>, Vec<u8>) {
    let mut buf = BytesMut::new();
    let mut mqtt = BytesMut::new();
    let mut upgraded = false;
    for c in chunks {
        buf.extend_from_slice(c);
        if !upgraded {
            match ws::accept(&mut buf, "/mqtt", &[]) {
                Ok(Some(_)) => upgraded = true,
                Ok(None) => continue,
                Err(e) => return (Err(e), mqtt.to_vec()),
            }
        }
        match ws::unframe(&mut buf, &mut mqtt, 4096) {
            Ok(ctl) if ctl.closed => return (Ok(true), mqtt.to_vec()),
            Ok(_) => {}
            Err(e) => return (Err(e), mqtt.to_vec()),
        }
    }
    (Ok(false), mqtt.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let (whole, mqtt) = run(&[data]);
    assert!(mqtt.len() <= data.len());
    let split = data.len() / 2;
    let (parts, mqtt_parts) = run(&[&data[..split], &data[split..]]);
    if whole.is_ok() && parts.is_ok() {
        assert_eq!(mqtt, mqtt_parts, "the same bytes split in two give the same MQTT stream");
    }
});
