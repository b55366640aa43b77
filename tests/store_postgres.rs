//! The PostgreSQL store against a real cluster the test starts itself (`common::pg`): the
//! schema's versioned migrations.

mod common;

use common::pg::Cluster;
use pixelrelay::store::postgres::schema::{self, Migrated, SchemaError};

async fn versions(c: &tokio_postgres::Client) -> Vec<i32> {
    c.query(
        "SELECT version FROM pixelrelay_schema ORDER BY version",
        &[],
    )
    .await
    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
    .unwrap_or_default()
}

async fn tables(c: &tokio_postgres::Client) -> Vec<String> {
    let rows = c
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("tables");
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_in_order_and_a_newer_schema_is_refused() {
    let Some(pg) = Cluster::start() else { return };
    let latest = schema::latest();

    // A fresh database gets every migration, once.
    pg.create_db("fresh").await;
    let mut c = pg.connect("fresh").await;
    let m = schema::migrate(&mut c).await.expect("migrate");
    assert_eq!(
        m,
        Migrated {
            from: 0,
            to: latest
        }
    );
    assert_eq!(versions(&c).await, (1..=latest).collect::<Vec<_>>());
    for t in [
        "messages",
        "opens",
        "state",
        "journal_marks",
        "outbox",
        "dead_letters",
    ] {
        assert!(tables(&c).await.contains(&t.to_string()), "{t}");
    }
    let again = schema::migrate(&mut c).await.expect("again");
    assert_eq!(
        again,
        Migrated {
            from: latest,
            to: latest
        }
    );
    assert_eq!(versions(&c).await.len(), latest as usize);

    // Written by a newer pixelrelay: refused, naming both versions, nothing touched.
    c.execute(
        "INSERT INTO pixelrelay_schema (version, name) VALUES ($1, 'from the future')",
        &[&(latest + 1)],
    )
    .await
    .expect("insert");
    let err = schema::migrate(&mut c).await.unwrap_err();
    assert!(
        matches!(err, SchemaError::Newer { found, known } if found == latest + 1 && known == latest)
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("version {}", latest + 1)) && text.contains(&format!("({latest})")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_migrating_at_once_apply_each_migration_once() {
    let Some(pg) = Cluster::start() else { return };
    pg.create_db("race").await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(pg.connect("race").await);
    }
    let runs: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move { schema::migrate(&mut c).await.map_err(|e| e.to_string()) })
        })
        .collect();
    let mut froms = Vec::new();
    for r in runs {
        froms.push(r.await.expect("task").expect("migrate").from);
    }
    froms.sort();
    // One node found the empty database; the others, waiting on the lock, found it done.
    assert_eq!(
        froms,
        vec![0, schema::latest(), schema::latest(), schema::latest()]
    );
    let c = pg.connect("race").await;
    assert_eq!(versions(&c).await.len(), schema::latest() as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_fails_leaves_the_database_as_it_was() {
    let Some(pg) = Cluster::start() else { return };
    pg.create_db("broken").await;
    let mut c = pg.connect("broken").await;
    let mut list = schema::MIGRATIONS.to_vec();
    list.push((
        schema::latest() + 1,
        "broken",
        "CREATE TABLE ok_so_far (x int); SELECT * FROM no_such_table;",
    ));
    let err = schema::migrate_to(&mut c, &list).await.unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
    // All in one transaction: not even the first migration stayed.
    assert!(versions(&c).await.is_empty());
    assert!(!tables(&c).await.contains(&"messages".to_string()));
    assert!(!tables(&c).await.contains(&"ok_so_far".to_string()));
    // The list it knows still applies.
    schema::migrate(&mut c).await.expect("migrate");
    assert_eq!(versions(&c).await.len(), schema::latest() as usize);
}

/// A PostgreSQL store on `url` (with `ca_file`), its files in `dir`.
fn store_cfg(
    dir: &std::path::Path,
    url: String,
    ca_file: Option<std::path::PathBuf>,
) -> pixelrelay::config::StoreConfig {
    pixelrelay::config::StoreConfig {
        path: dir.join("db"),
        subjects: false,
        anonymize_ip: false,
        retention_days: 0,
        flush_interval: std::time::Duration::from_millis(100),
        open_log: None,
        postgres: Some(pixelrelay::config::PostgresConfig {
            url,
            password_file: None,
            ca_file,
        }),
    }
}

#[test]
fn tls_to_the_database_when_the_url_asks_verified_with_rustls() {
    use pixelrelay::store::Store;
    let Some((pg, cert)) = Cluster::start_tls() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("db-ca.pem");
    std::fs::write(&ca, cert).unwrap();
    let url = format!("{}?sslmode=require", pg.url("postgres"));
    // The server's certificate trusted through store.ca_file: connected over TLS.
    let s = Store::open(&store_cfg(dir.path(), url.clone(), Some(ca))).expect("TLS store");
    assert_eq!(s.stats().counters.recorded, 0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls_in_use = rt.block_on(async {
        let c = pg.connect("postgres").await;
        c.query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE s.ssl AND a.application_name = 'pixelrelay'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    });
    assert!(tls_in_use > 0, "the store's connections use TLS");
    drop(s);
    // Not trusted: refused, and the error says why.
    let err = Store::open(&store_cfg(dir.path(), url, None))
        .and_then(|s| s.journal_mark().map(|_| s))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
}
