//! The `pixelrelay` command: parses arguments, loads the config, calls into the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pixelrelay::admin_client::{self, AdminClient, CliError, TailOptions};
use pixelrelay::config::{Config, LogFormat};
use pixelrelay::server::{self, Server};

/// mimalloc rather than glibc's malloc: the open indexer records ~35 % more opens per second
/// with it (27 000 → 37 000 on the bench machine, `store_record_open_rate` in
/// `tests/pixel_bench.rs`), and a pixel hit's journal append takes 0.2 µs instead of 0.4.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With the shared store, the token key every node uses must already be there.
fn shared_key(cfg: &Config) -> Result<(), String> {
    match cfg.store.postgres {
        Some(_) => server::token_secret(cfg).map(|_| ()),
        None => Ok(()),
    }
}

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP=1` asks for
/// them. mimalloc commits its arena up front, and on a kernel with THP `always` every 2 MiB of
/// it a thread touches becomes resident whole: 45 of the idle process's 56 MB, and twice the
/// peak under load, for no measurable throughput (bench/RESULTS.md, "Memory").
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none_or(|v| v != "1") {
        // The flag belongs to the whole process (its mm), not to the calling thread; a kernel
        // without it says EINVAL, which changes nothing.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

/// SMTP relay that adds an open-tracking pixel to single-recipient HTML mail and records opens.
///
/// Point your mail server's smarthost (Postfix `relayhost`) at pixelrelay; it relays every
/// message to the real upstream in real time and answers with the upstream's own replies.
#[derive(Parser, Debug)]
#[command(name = "pixelrelay", version, about, long_about)]
struct Cli {
    /// Configuration file; relative paths inside it are relative to its folder. Without it:
    /// $PIXELRELAY_CONFIG, else ./relay.toml, else /etc/pixelrelay/relay.toml.
    #[arg(short, long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the SMTP relay, the pixel HTTP listener and the admin listener.
    Serve {
        /// Log as JSON lines instead of readable text (overrides [log] format).
        #[arg(long)]
        json_log: bool,
    },
    /// Check the configuration: exit 0 with a summary, or 2 with every error and its key.
    CheckConfig,
    /// Read a password on standard input and print its argon2id hash for [[smtp.auth.users]].
    HashPassword,
    /// Print the last opens and, with -f, follow new ones live (via the admin API).
    ///
    /// One line per open: time (UTC), recipient, subject (when stored), client, device,
    /// `person` or `machine:<reason>`, IP. Control characters in these are shown as `?`.
    Tail {
        /// Keep following new opens; reconnects with its cursor if the relay restarts.
        #[arg(short, long)]
        follow: bool,
        /// Print each open as its JSON line instead of an aligned text line.
        #[arg(long)]
        json: bool,
        /// How many stored opens to print first (at most 1000).
        #[arg(short = 'n', long = "lines", default_value_t = 20, value_name = "N")]
        lines: usize,
    },
    /// Print the totals: relayed, tracked, skipped, opens, unique opens, open rate.
    Stats {
        /// Print the JSON of GET /api/v1/stats.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Command::HashPassword = cli.command {
        return hash_password();
    }
    let config = match pixelrelay::config::locate(
        cli.config.as_deref(),
        std::env::var_os("PIXELRELAY_CONFIG").as_deref(),
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pixelrelay: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::HashPassword => hash_password(),
        Command::CheckConfig => check_config(&config),
        Command::Tail {
            follow,
            json,
            lines,
        } => {
            let opts = TailOptions {
                follow,
                json,
                lines,
            };
            client_command(&config, move |c| async move {
                admin_client::tail(&c, opts, &mut std::io::stdout().lock()).await
            })
        }
        Command::Stats { json } => client_command(&config, move |c| async move {
            admin_client::stats(&c, json, &mut std::io::stdout().lock()).await
        }),
        Command::Serve { json_log } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg, json_log);
            tracing::info!(config = %shown(&config), "config read");
            for w in cfg.warnings() {
                tracing::warn!(event = "config_warning", "{w}");
            }
            serve(cfg)
        }
    }
}

/// The config at `path`, or exit 2 after every error with its key.
fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errs| {
        for e in errs.0 {
            eprintln!("pixelrelay: {}: {e}", path.display());
        }
        ExitCode::from(2)
    })
}

/// `path` made absolute for messages (as given when that fails).
fn shown(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// `check-config`: exit 0 with a one-line summary (the file read first) and the warnings, or
/// 2 with every error and its key (after the file's name). What `serve` would refuse later
/// is checked too: the catalogue files and databases, the previous keys, the shared key, the
/// upstream password.
fn check_config(config: &Path) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let checked = server::previous_secrets(&cfg.tracking)
        .and_then(|_| shared_key(&cfg))
        .and_then(|_| server::upstream_password(&cfg).map(|_| ()))
        .and_then(|_| pixelrelay::evidence::Evidence::load(&cfg.tracking));
    match checked {
        Ok(e) => {
            // One line (SPEC), the file read first.
            let summary = cfg.summary();
            let rest = summary.strip_prefix("ok: ").unwrap_or(&summary);
            println!("ok: config {}; {rest}; {}", shown(config), e.summary());
            for w in cfg.warnings() {
                eprintln!("pixelrelay: warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pixelrelay: {}: {e}", config.display());
            ExitCode::from(2)
        }
    }
}

fn hash_password() -> ExitCode {
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pixelrelay: {e}");
            return ExitCode::from(2);
        }
    };
    if password.is_empty() {
        eprintln!("pixelrelay: empty password (type it on standard input)");
        return ExitCode::from(2);
    }
    match pixelrelay::smtp::auth::hash_password(&password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pixelrelay: {e}");
            ExitCode::from(1)
        }
    }
}

/// The password for `hash-password`: on a terminal, asked twice with echo off (and echo
/// restored after); from a pipe, its first line.
fn read_password() -> Result<String, String> {
    use std::io::IsTerminal;
    let line = || {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password: {e}"))?;
        Ok::<_, String>(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return line();
    }
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let saved =
        tcgetattr(&stdin).map_err(|e| format!("cannot read the terminal's settings: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Now, &quiet)
        .map_err(|e| format!("cannot turn the terminal's echo off: {e}"))?;
    let asked = (|| {
        eprint!("Password: ");
        let first = line()?;
        eprint!("Again: ");
        let again = line()?;
        if first == again {
            Ok(first)
        } else {
            Err("the two passwords differ".to_string())
        }
    })();
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    asked
}

/// Runs an admin API client command: loads the config, reads the token, reports errors.
fn client_command<F, Fut>(config: &Path, run: F) -> ExitCode
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: Future<Output = Result<(), CliError>>,
{
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(admin) = &cfg.admin else {
        eprintln!(
            "pixelrelay: {}: no [admin] section: the admin API is off on this node; point -c at the config of a node that runs it",
            config.display()
        );
        return ExitCode::from(2);
    };
    let client = match AdminClient::from_config(admin) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pixelrelay: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pixelrelay: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(client)) {
        Ok(()) | Err(CliError::OutputClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pixelrelay: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cfg: &Config, json: bool) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG wins over log.level, also across config reloads.
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&cfg.log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // The filter's setter for config reloads (the handle's type names the formatter).
    macro_rules! reloadable {
        ($b:expr) => {{
            let b = $b.with_filter_reloading();
            let handle = b.reload_handle();
            if !pinned {
                pixelrelay::log_level::install(move |level| {
                    let f = EnvFilter::try_new(level).map_err(|e| format!("log.level: {e}"))?;
                    handle.reload(f).map_err(|e| format!("log.level: {e}"))
                });
            }
            b.init();
        }};
    }
    if json || cfg.log.format == LogFormat::Json {
        reloadable!(builder.json().flatten_event(true));
    } else {
        reloadable!(builder);
    }
}

fn serve(cfg: Config) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pixelrelay: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let server = match Server::bind(cfg).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pixelrelay: {e}");
                return ExitCode::from(1);
            }
        };
        let stop = server::termination();
        let a = server.addresses();
        let smtp: Vec<String> = a.smtp.iter().map(ToString::to_string).collect();
        let smtp = if smtp.is_empty() {
            "off".to_string()
        } else {
            smtp.join(",")
        };
        let off = |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
        tracing::info!(smtp = %smtp, http = %off(a.http), admin = %off(a.admin), "ready");
        // Every listener is bound: systemd (Type=notify) may start what comes after us.
        pixelrelay::sd_notify::notify("READY=1");
        server.run(stop).await;
        ExitCode::SUCCESS
    })
}
