//! Private Postfix peers for the tests: smtp-sink as an upstream that dumps what it gets, and
//! a Postfix instance of its own (config, queue and log in a temp dir, loopback ports only).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{files_below, free_port, need, wait_listening};

/// Postfix's smtp-sink, dumping each message into a folder.
pub struct Sink {
    child: Child,
    pub addr: SocketAddr,
    dump: tempfile::TempDir,
}

impl Sink {
    pub async fn start() -> Option<Sink> {
        let bin = need("smtp-sink")?;
        let dump = tempfile::tempdir().unwrap();
        // smtp-sink writes dumps as the -u user.
        std::fs::set_permissions(
            dump.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let template = format!("{}/%M.", dump.path().display());
        let child = Command::new(bin)
            .args(["-u", "nobody", "-h", "sink.localhost", "-d", &template])
            .arg(addr.to_string())
            .arg("64")
            .stdout(Stdio::null())
            .spawn()
            .expect("smtp-sink");
        wait_listening(addr).await;
        Some(Sink { child, addr, dump })
    }

    /// The messages smtp-sink has received in full. It creates a transaction's file when the
    /// data begins and keeps it open until the final dot, so a file it still holds open is a
    /// message in progress and is left out (listed first, its descriptors read after: a file
    /// closed in between is complete).
    pub fn dumps(&self) -> Vec<Vec<u8>> {
        let files = files_below(self.dump.path());
        let open = self.open_files();
        files
            .iter()
            .filter(|p| {
                let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
                !open.contains(&p)
            })
            .filter_map(|p| std::fs::read(p).ok())
            .collect()
    }

    /// The files smtp-sink (one process) has open.
    fn open_files(&self) -> Vec<std::path::PathBuf> {
        let fds = format!("/proc/{}/fd", self.child.id());
        let entries = std::fs::read_dir(&fds)
            .unwrap_or_else(|e| panic!("{fds}: {e} (needed to tell finished dumps)"));
        entries
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Postfix instance (own config and queue dirs, loopback ports only).
pub struct Postfix {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Postfix {
    pub fn start(relay: SocketAddr) -> Option<Postfix> {
        Postfix::start_with(relay, &[])
    }

    /// [`Postfix::start`] with `extra` `main.cf` settings over the defaults.
    pub fn start_with(relay: SocketAddr, extra: &[&str]) -> Option<Postfix> {
        let postconf = need("postconf")?;
        let postfix = need("postfix")?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        for sub in ["etc", "spool", "data"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("etc/main.cf"), "").unwrap();
        std::fs::copy("/usr/share/postfix/master.cf.dist", d.join("etc/master.cf")).unwrap();
        let port = free_port();
        let etc = d.join("etc");
        let e = |args: &[&str]| {
            let st = Command::new(&postconf)
                .arg("-c")
                .arg(&etc)
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "postconf {args:?}");
        };
        let ds = d.display();
        e(&[
            "-e",
            &format!("config_directory={ds}/etc"),
            &format!("queue_directory={ds}/spool"),
            &format!("data_directory={ds}/data"),
            &format!("maillog_file={ds}/maillog"),
            &format!("maillog_file_prefixes={ds}"),
            "compatibility_level=3.6",
            "myhostname=mta.localhost",
            "mydomain=localhost",
            "mydestination=",
            "local_recipient_maps=",
            "local_transport=error:5.1.1 local delivery disabled",
            "alias_maps=",
            "alias_database=",
            &format!("relayhost=[127.0.0.1]:{}", relay.port()),
            "inet_interfaces=loopback-only",
            "inet_protocols=ipv4",
            "mynetworks=127.0.0.0/8",
            "smtpd_relay_restrictions=permit_mynetworks, reject",
            "smtp_dns_support_level=disabled",
            "smtp_host_lookup=native",
            "lmtp_host_lookup=native",
            "smtpd_peername_lookup=no",
            "smtp_destination_recipient_limit=1",
            "disable_mime_output_conversion=yes",
            "in_flow_delay=0",
        ]);
        if !extra.is_empty() {
            let mut args = vec!["-e"];
            args.extend_from_slice(extra);
            e(&args);
        }
        e(&["-F", "*/*/chroot = n"]);
        e(&["-M#", "smtp/inet"]);
        e(&[
            "-M",
            &format!("127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - smtpd"),
        ]);
        let _ = Command::new("chown")
            .arg("postfix")
            .arg(d.join("data"))
            .status();
        let st = Command::new(&postfix)
            .arg("-c")
            .arg(&etc)
            .arg("start")
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "postfix start: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        Some(Postfix { dir, port })
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let etc = self.dir.path().join("etc");
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&etc)
            .arg("stop")
            .output();
        // Wait for the master to exit so the temp dir can go.
        let pidfile = self.dir.path().join("spool/pid/master.pid");
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let pid = pid.trim().to_string();
            for _ in 0..200 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
        }
    }
}
