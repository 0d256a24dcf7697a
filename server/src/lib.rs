//! `wallex-server`: the Wallex service around the pure engine.
//!
//! - [`ports`]: the traits the pipeline needs from the world (store, bus, clock).
//! - [`pipeline`]: command processor (group commit), outbox relay, projectors, recovery; generic
//!   over the ports, compiled under `--cfg madsim` too.
//! - [`memory`]: in-memory store and in-process bus, for tests, benches and the conformance suite.
//! - [`demo`]: the engine tour `wallex demo` prints.

pub mod conformance;
pub mod demo;
#[cfg(not(madsim))]
pub mod embedded;
#[cfg(not(madsim))]
pub mod http;
#[cfg(not(madsim))]
pub mod kafka;
pub mod memory;
pub mod pipeline;
pub mod ports;
#[cfg(not(madsim))]
pub mod postgres;
#[cfg(not(madsim))]
mod sql;

/// The wall clock, for production.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

#[cfg(not(madsim))]
impl ports::Clock for SystemClock {
    fn now(&self) -> wallex_engine::Timestamp {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        wallex_engine::Timestamp::from_unix_micros(u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX))
    }
}
