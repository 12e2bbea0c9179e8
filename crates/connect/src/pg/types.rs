//! Postgres text-format values to JSON (stub; being written).
