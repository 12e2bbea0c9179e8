//! The SQLite outbox relay (stub; being written).

use crate::config::SqliteOutboxConfig;
use crate::error::Result;
use crate::runtime::SourceContext;

/// Runs a SQLite outbox source until shutdown or a failure.
pub async fn run(
    _name: &str,
    _config: &SqliteOutboxConfig,
    _ctx: &mut SourceContext,
) -> Result<()> {
    Ok(())
}
