//! The contract suite on PostgreSQL: this test binary runs itself again, filtered to the
//! contract, against a throwaway cluster, each test with a database of its own.

use std::path::Path;

/// Set (to `postgres://user:password@host:port`) when the suite runs on PostgreSQL.
const PG_SERVER: &str = "PIXELRELAY_CONTRACT_PG_SERVER";

/// When the suite runs on PostgreSQL: the database of the test whose files live in `dir`
/// (made now unless it exists: a test reopening its store asks again).
pub(super) fn database_for(dir: &Path) -> Option<crate::config::PostgresConfig> {
    let server = std::env::var(PG_SERVER).ok()?;
    let name: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let db = format!("contract_{name}");
    create_database(&server, &db);
    Some(crate::config::PostgresConfig {
        url: format!("{server}/{db}"),
        password_file: None,
        ca_file: None,
    })
}

/// Creates database `db` unless it exists (a test reopening its store asks again).
fn create_database(server: &str, db: &str) {
    let (server, db) = (format!("{server}/postgres"), db.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
                .await
                .expect("connect to the contract's server");
            tokio::spawn(conn);
            let exists = c
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
                .await
                .expect("query");
            if exists.is_none() {
                c.batch_execute(&format!("CREATE DATABASE \"{db}\""))
                    .await
                    .expect("create database");
            }
        });
    })
    .join()
    .expect("create the test database");
}

/// Held by tests that load the CPUs for seconds (this suite's run on PostgreSQL) or measure
/// how busy they are (the indexer's pacing): they never overlap.
pub(crate) static CPU_HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[path = "../../../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg_cluster;

/// The whole suite again on PostgreSQL: this test binary runs itself, filtered to the
/// contract, against a throwaway cluster, each test in a database of its own.
#[test]
fn the_contract_holds_on_postgres() {
    if std::env::var_os(PG_SERVER).is_some() {
        return; // the run on PostgreSQL itself
    }
    let _heavy = CPU_HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(cluster) = pg_cluster::Cluster::start() else {
        return;
    };
    let server = format!(
        "postgres://postgres:{}@127.0.0.1:{}",
        pg_cluster::Cluster::PASSWORD,
        cluster.port
    );
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args(["store::contract::", "--test-threads=2"])
        .env(PG_SERVER, &server)
        .output()
        .expect("run the suite on PostgreSQL");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the contract suite failed on PostgreSQL:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed;"), "{stdout}");
}
