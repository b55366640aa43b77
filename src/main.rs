//! The `pixelrelay` command: parses arguments, loads the config, calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pixelrelay::config::{Config, LogFormat};
use pixelrelay::server::{self, Server};

/// SMTP relay that adds an open-tracking pixel to single-recipient HTML mail and records opens.
///
/// Point your mail server's smarthost (Postfix `relayhost`) at pixelrelay; it relays every
/// message to the real upstream in real time and answers with the upstream's own replies.
#[derive(Parser, Debug)]
#[command(name = "pixelrelay", version, about, long_about)]
struct Cli {
    /// Configuration file; relative paths inside it are relative to its folder.
    #[arg(
        short,
        long,
        global = true,
        default_value = "relay.toml",
        value_name = "PATH"
    )]
    config: PathBuf,
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
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::CheckConfig => match Config::load(&cli.config) {
            Ok(cfg) => {
                println!("{}", cfg.summary());
                ExitCode::SUCCESS
            }
            Err(errs) => {
                for e in errs.0 {
                    eprintln!("pixelrelay: {}: {e}", cli.config.display());
                }
                ExitCode::from(2)
            }
        },
        Command::Serve { json_log } => {
            let cfg = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(errs) => {
                    for e in errs.0 {
                        eprintln!("pixelrelay: {}: {e}", cli.config.display());
                    }
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg, json_log);
            serve(cfg)
        }
    }
}

fn init_logging(cfg: &Config, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json || cfg.log.format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
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
        let a = server.addresses();
        let smtp: Vec<String> = a.smtp.iter().map(ToString::to_string).collect();
        tracing::info!(smtp = %smtp.join(","), http = %a.http, admin = %a.admin, "ready");
        server.run(server::termination()).await;
        ExitCode::SUCCESS
    })
}
