//! Failpoints: the places where a test can make a source fail on purpose, to reproduce in-process
//! a crash at the worst moment of its durability protocol (named in one module, as supabase
//! etl's `failpoints.rs` does, without a dependency).
//!
//! Invariants: a failpoint is armed only from code, through [`SourceContext::failpoints`], never
//! from configuration, so no TOML can make a running source fail; unarmed (the default) it costs
//! one `Option` check per batch; armed, it fires a set number of times and then never again.
//! A firing is [`ConnectError::Failpoint`], which is transient, so under the supervisor a fired
//! failpoint behaves like a crash followed by a restart: the source's state in `__connectors`
//! and Postgres's slot are left exactly as the crash left them.
//!
//! [`SourceContext::failpoints`]: crate::runtime::SourceContext::failpoints

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::error::{ConnectError, Result};

/// Name of the failpoint between a durable append and the upstream acknowledgement.
pub const AFTER_APPEND_BEFORE_ACK: &str = "after_append_before_ack";

/// The failpoints of one source (all unarmed by default). Clones share their counters.
#[derive(Debug, Clone, Default)]
pub struct Failpoints {
    /// Firings left of [`AFTER_APPEND_BEFORE_ACK`].
    after_append_before_ack: Option<Arc<AtomicU32>>,
}

impl Failpoints {
    /// Fails the source `times` times right after an append returned (the events are durable)
    /// and before the position they complete is confirmed upstream (CDC: reported to Postgres
    /// as flushed), as a crash between the two would.
    pub fn fail_after_append_before_ack(times: u32) -> Self {
        Self { after_append_before_ack: Some(Arc::new(AtomicU32::new(times))) }
    }

    /// Firings of [`AFTER_APPEND_BEFORE_ACK`] still to come (0 when unarmed).
    pub fn after_append_before_ack_left(&self) -> u32 {
        self.after_append_before_ack.as_ref().map_or(0, |n| n.load(Ordering::SeqCst))
    }

    /// Passes [`AFTER_APPEND_BEFORE_ACK`]: an error while it has firings left.
    pub(crate) fn after_append_before_ack(&self, source_name: &str) -> Result<()> {
        let Some(left) = &self.after_append_before_ack else { return Ok(()) };
        match left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => Err(ConnectError::Failpoint {
                source_name: source_name.into(),
                failpoint: AFTER_APPEND_BEFORE_ACK,
            }),
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_failpoint_fires_its_count_then_never_and_an_unarmed_one_never() {
        assert!(Failpoints::default().after_append_before_ack("s").is_ok());
        let armed = Failpoints::fail_after_append_before_ack(2);
        let shared = armed.clone();
        assert!(matches!(
            armed.after_append_before_ack("s"),
            Err(ConnectError::Failpoint { failpoint: AFTER_APPEND_BEFORE_ACK, .. })
        ));
        assert_eq!(shared.after_append_before_ack_left(), 1);
        assert!(shared.after_append_before_ack("s").is_err());
        assert!(armed.after_append_before_ack("s").is_ok());
        assert_eq!(armed.after_append_before_ack_left(), 0);
    }
}
