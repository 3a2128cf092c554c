//! The PROXY protocol header parser on arbitrary bytes, fed as a connection feeds it (only the
//! bytes it asks for): it must never panic, never ask for zero bytes or for more than a header
//! may hold, and answer the same for the whole input as for the prefix it stopped at.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq::proxy_protocol::{parse, Step, V2_MAX};

fuzz_target!(|data: &[u8]| {
    let mut have = 0;
    let done = loop {
        let step = parse(&data[..have]);
        match step {
            Ok(Step::Need(n)) => {
                assert!(n > 0, "asked for nothing");
                have += n;
                assert!(have <= V2_MAX, "asked past the longest header");
                if have > data.len() {
                    break None;
                }
            }
            Ok(Step::Done(_)) | Err(_) => break Some(step),
        }
    };
    // Whatever it decided on a prefix, the whole input (more bytes than asked) never panics.
    let _ = parse(data);
    if let Some(result) = done {
        assert_eq!(parse(&data[..have]), result);
    }
});
