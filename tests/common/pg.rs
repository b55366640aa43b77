//! A throwaway PostgreSQL cluster for the tests (the integration tests' `common::pg`, and the
//! store contract suite's, which includes this file): `initdb` and `pg_ctl` under a temporary
//! directory, on a free loopback port, run as the `postgres` system user when the tests run as
//! root (PostgreSQL refuses root), stopped and removed on drop. Debian's `postgresql` package
//! provides the binaries (scripts/test installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster; its superuser is `postgres` with password [`Cluster::PASSWORD`].
pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    /// Run as this user (root's tests), or as ourselves (`None`).
    user: Option<&'static str>,
    /// Server options beyond the port and socket (TLS).
    extra: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub const PASSWORD: &'static str = "throwaway-test-password";

    /// Starts a cluster; `None` (the test skips, loudly) when PostgreSQL is not installed and
    /// the suite does not require peers.
    pub fn start() -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            if std::env::var_os("PIXELRELAY_REQUIRE_PEERS").is_some() {
                panic!("PostgreSQL is required but not installed (apt-get install postgresql)");
            }
            eprintln!("SKIPPED: PostgreSQL not installed (scripts/test installs it)");
            return None;
        };
        let user = is_root().then_some("postgres");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, Self::PASSWORD).expect("pwfile");
        if let Some(u) = user {
            // The postgres user must reach the directory and own what it writes.
            chmod(dir.path(), 0o755);
            chmod(&pwfile, 0o644);
            std::fs::create_dir(&data).expect("data dir");
            chown(&data, u);
        }
        // PostgreSQL cannot report the port it bound; the tests stop and restart it on it.
        let port = free_port_for_restarts();
        run(
            user,
            &bin.join("initdb"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--no-sync".as_ref(),
            ],
        );
        let cluster = Cluster {
            port,
            bin,
            data,
            user,
            // Extra server settings for a profiling run (e.g. log_min_duration_statement).
            extra: std::env::var("PIXELRELAY_TEST_PG_OPTIONS").unwrap_or_default(),
            _dir: dir,
        };
        cluster.restart();
        Some(cluster)
    }

    /// Starts a cluster that also speaks TLS, with a certificate for 127.0.0.1 made now;
    /// returns it with the certificate (PEM) a client must trust.
    pub fn start_tls() -> Option<(Cluster, String)> {
        let mut c = Cluster::start()?;
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
        let (crt, key) = (c.data.join("server.crt"), c.data.join("server.key"));
        std::fs::write(&crt, ck.cert.pem()).expect("cert file");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("key file");
        chmod(&key, 0o600);
        if let Some(u) = c.user {
            chown(&crt, u);
            chown(&key, u);
        }
        c.kill();
        c.extra = "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".into();
        c.restart();
        Some((c, ck.cert.pem()))
    }

    /// A connection string for database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{db}",
            Self::PASSWORD,
            self.port
        )
    }

    /// Connects to `db` (driving the connection on a task of the current runtime).
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to the test cluster: {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Creates an empty database `name`.
    pub async fn create_db(&self, name: &str) {
        let c = self.connect("postgres").await;
        c.batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    }

    /// Stops the server now (`pg_ctl stop -m immediate`): the database goes away under its
    /// clients, as when its machine dies.
    pub fn kill(&self) {
        self.pg_ctl(&["stop", "-m", "immediate"]);
    }

    /// Starts the server (again, after [`Cluster::kill`]) on its port. No fsync (a test
    /// cluster need not survive the machine), but each commit is written before it returns,
    /// so that it survives the server's own death.
    pub fn restart(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off {}",
            self.port,
            self.data.display(),
            self.extra
        );
        let log = self.data.join("server.log");
        self.pg_ctl(&["-o", &opts, "-l", &log.to_string_lossy(), "start"]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut all: Vec<&std::ffi::OsStr> = vec!["-D".as_ref(), self.data.as_os_str()];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        all.push("-w".as_ref());
        run(self.user, &self.bin.join("pg_ctl"), &all);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut cmd = command(self.user, &self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate"]);
        let _ = cmd.output();
    }
}

/// The newest installed PostgreSQL's binaries (Debian keeps them per version).
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// A free port for a listener that a test stops and starts again on the same port: below the
/// kernel's ephemeral range, so that no outgoing connection (which takes its local port from
/// that range) can sit on it while its process is down and make the restart fail to bind.
pub fn free_port_for_restarts() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(10_001));
    let mut x = (std::process::id() as u64)
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64));
    loop {
        // xorshift: a different port each try, spread over the range.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = from + (x % u64::from(to - from)) as u16;
        // Each handed out once per process: a restart needs its port to itself.
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() && claim_port(p) {
            return p;
        }
    }
}

fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(p: &Path, user: &str) {
    let out = Command::new("chown")
        .arg(user)
        .arg(p)
        .output()
        .expect("chown");
    assert!(out.status.success(), "chown {user} {}", p.display());
}

fn command(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn run(user: Option<&str>, program: &Path, args: &[&std::ffi::OsStr]) {
    let out = command(user, program)
        .args(args)
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Records `port` as handed out by this test process; false if it was before (here, since the
/// library's tests compile this file too). A port is free once its probe listener closes, so
/// the kernel may give the same one to the next probe: two listeners of one peer (pebble's
/// directory and its management API, say) were once given the same port, and the peer never
/// served the second.
pub fn claim_port(port: u16) -> bool {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(port)
}
