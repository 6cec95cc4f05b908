//! Multi-node tests over real TCP on 127.0.0.1: one integration-test binary made of
//! modules. Every test binds port 0, stops by itself (each is wrapped in a timeout) and
//! uses short Raft timeouts.

mod api;
mod bad_input;
mod clocks;
mod common;
mod disk;
mod failover;
mod hostile;
mod housekeeping;
mod membership;
mod partition;
mod replication;
mod restart;
mod tenants;
mod watch_replicas;
