//! The PostgreSQL schema: versioned migrations kept in the repository (`migrations/NNNN_*.sql`),
//! applied in order on start, each once, in one transaction under an advisory lock so that
//! nodes starting together apply them once. A database whose schema is newer than this binary
//! knows is refused, naming both versions: an older pixelrelay must not write to it.

use tokio_postgres::Client;

/// Every migration, oldest first: (version, name, SQL). Versions count up from 1 with no gap.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (
        2,
        "held_hits",
        include_str!("migrations/0002_held_hits.sql"),
    ),
    (
        3,
        "opens_without_fk",
        include_str!("migrations/0003_opens_without_fk.sql"),
    ),
    (4, "clicks", include_str!("migrations/0004_clicks.sql")),
];

/// The schema version this binary writes.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// The lock every migrating node takes (any constant both sides agree on: "pixelrelay").
const LOCK: i64 = 0x7069_7865_6c72_6c79;

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The version found (0: an empty database).
    pub from: i32,
    /// The version now.
    pub to: i32,
}

/// Why the schema could not be brought up to date.
#[derive(Debug)]
pub enum SchemaError {
    /// The database was migrated by a newer pixelrelay.
    Newer {
        /// Its version.
        found: i32,
        /// Ours.
        known: i32,
    },
    /// The database said no.
    Db(tokio_postgres::Error),
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaError::Newer { found, known } => write!(
                f,
                "the database's schema is version {found}, newer than this pixelrelay knows ({known}): run a pixelrelay at least as new as the one that migrated it"
            ),
            SchemaError::Db(e) => f.write_str(&super::describe(e)),
        }
    }
}

impl std::error::Error for SchemaError {}

impl From<tokio_postgres::Error> for SchemaError {
    fn from(e: tokio_postgres::Error) -> SchemaError {
        SchemaError::Db(e)
    }
}

/// Brings the database's schema up to [`latest`], or refuses a newer one.
pub async fn migrate(client: &mut Client) -> Result<Migrated, SchemaError> {
    migrate_to(client, MIGRATIONS).await
}

/// [`migrate`] with a given list (tests add versions of their own).
#[doc(hidden)]
pub async fn migrate_to(
    client: &mut Client,
    migrations: &[(i32, &str, &str)],
) -> Result<Migrated, SchemaError> {
    let known = migrations.last().map_or(0, |m| m.0);
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS pixelrelay_schema (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pixelrelay_schema",
            &[],
        )
        .await?;
    let from: i32 = row.get(0);
    if from > known {
        return Err(SchemaError::Newer { found: from, known });
    }
    for (version, name, sql) in migrations.iter().filter(|m| m.0 > from) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO pixelrelay_schema (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Migrated { from, to: known })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_without_a_gap() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.0, i as i32 + 1, "{}", m.1);
            assert!(!m.2.trim().is_empty());
        }
        assert_eq!(latest(), MIGRATIONS.len() as i32);
    }
}
