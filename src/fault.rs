//! Fault injection for the integration tests, in debug builds only: a shard panics when a
//! client publishes to the topic named by `RINGMQ_FAULT_PANIC_TOPIC`, so a test can check what
//! a shard panic does to the whole broker (it ends the process: `panic = "abort"`); and the
//! store's writes fail while the file named by `RINGMQ_FAULT_STORE_FAILS` exists, as on a full
//! or failing disk.

use std::sync::OnceLock;

/// Panics when `topic` is the configured fault topic.
pub fn panic_on_topic(topic: &str) {
    static TOPIC: OnceLock<Option<String>> = OnceLock::new();
    let fault = TOPIC.get_or_init(|| std::env::var("RINGMQ_FAULT_PANIC_TOPIC").ok());
    if fault.as_deref() == Some(topic) {
        panic!("fault injected: a publish to {topic}");
    }
}

/// Whether the store's writes fail now.
pub fn store_fails() -> bool {
    static FILE: OnceLock<Option<String>> = OnceLock::new();
    FILE.get_or_init(|| std::env::var("RINGMQ_FAULT_STORE_FAILS").ok())
        .as_deref()
        .is_some_and(|f| std::path::Path::new(f).exists())
}
