//! The transactional outbox (stub; being written).

use crate::config::PgOutboxConfig;
use crate::error::Result;
use crate::runtime::SourceContext;

/// Runs a Postgres outbox source until shutdown or a failure.
pub async fn run_postgres(
    _name: &str,
    _config: &PgOutboxConfig,
    _ctx: &mut SourceContext,
) -> Result<()> {
    Ok(())
}
