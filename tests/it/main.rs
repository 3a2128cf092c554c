//! Integration tests: the real broker on loopback ports, with 1 shard and with 4 shards so that
//! cross-shard paths run, driven by raw-byte clients and rumqttc.

mod clients;
mod hardening;
mod harness;
mod hibernation;
mod listeners;
mod loadgen;
mod operations;
mod protocol;
mod security;
