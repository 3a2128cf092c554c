//! Fuzzes the decoder: any bytes, any protocol version, any size limit; decoding must never
//! panic, and whatever decodes must encode and decode back to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmq::codec::{decode, encode, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let proto = match selector % 3 {
        0 => Protocol::V31,
        1 => Protocol::V311,
        _ => Protocol::V5,
    };
    let max = if selector & 0x80 != 0 { 64 } else { 1 << 20 };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(packet)) = decode(&mut buf, proto, max) {
        let mut out = BytesMut::new();
        encode(&packet, proto, &mut out);
        let again = decode(&mut out, proto, usize::MAX);
        assert_eq!(again, Ok(Some(packet)), "re-decode of an encoded packet");
    }
});
