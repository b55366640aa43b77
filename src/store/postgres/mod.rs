//! The PostgreSQL store, shared by several nodes (`[store] backend = "postgres"`): its schema
//! and migrations. The [`Backend`](super::Backend) over it is being built on these.

pub mod schema;

/// A database error as an admin needs it: the server's own message (and its detail, hint and
/// SQLSTATE) rather than tokio-postgres's bare "db error".
pub fn describe(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return e.to_string();
    };
    let mut s = format!("{} ({})", db.message(), db.code().code());
    if let Some(d) = db.detail() {
        s.push_str("; ");
        s.push_str(d);
    }
    if let Some(h) = db.hint() {
        s.push_str("; hint: ");
        s.push_str(h);
    }
    s
}
