//! Integration tests: the real broker on loopback ports, with 1 shard and with 4 shards so that
//! cross-shard paths run, driven by raw-byte clients and rumqttc. The brokers inherit the test
//! process's environment, so `RINGMQ_BROKER__DRIVER=epoll cargo test --test it` runs them all on
//! epoll (tests that ask for a driver themselves excepted).

mod alarms;
mod banned;
mod clients;
mod cluster;
mod daemon;
mod dashboard;
mod delayed;
mod driver;
mod durability;
mod hardening;
mod harness;
mod hibernation;
mod in_process;
mod listeners;
mod loadgen;
mod mosquitto_parity;
mod netns;
mod operations;
mod protocol;
mod proxy_protocol;
mod security;
mod topics;
mod unix_socket;
