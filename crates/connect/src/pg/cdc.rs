//! Postgres change data capture (stub; being written).

use crate::config::PgCdcConfig;
use crate::error::Result;
use crate::runtime::SourceContext;

/// Runs the CDC source until shutdown or a failure.
pub async fn run(_name: &str, _config: &PgCdcConfig, _ctx: &mut SourceContext) -> Result<()> {
    Ok(())
}
