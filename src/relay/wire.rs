//! The relay's side of the upstream wire: the command lines of a group of envelope commands
//! (with the parameters the upstream's EHLO allows), and opening a transaction on a pooled
//! connection, after `XFORWARD` when configured.

use std::net::SocketAddr;

use tracing::warn;

use crate::smtp::Envelope;
use crate::smtp::command::PathArg;
use crate::smtp::reply::Reply;
use crate::upstream::{Connection, Upstream, UpstreamError, xforward};

/// `MAIL FROM:<a> params` / `RCPT TO:<a> params` with only the parameters the upstream knows.
pub(super) fn path_command(verb: &str, arg: &PathArg, conn: &Connection) -> String {
    let mut line = format!("{verb}:<{}>", arg.address);
    for (k, v) in &arg.params {
        if conn.ext.allows_param(k) {
            line.push(' ');
            line.push_str(k);
            if let Some(v) = v {
                line.push('=');
                line.push_str(v);
            }
        }
    }
    line
}

/// The wire lines for a group on `conn` (parameters depend on the connection's EHLO).
pub(super) fn lines(cmds: &[Envelope], conn: &Connection) -> Vec<(String, &'static str)> {
    cmds.iter()
        .map(|c| {
            let line = match c {
                Envelope::Mail { path, .. } => path_command("MAIL FROM", path, conn),
                Envelope::Rcpt(path) => path_command("RCPT TO", path, conn),
                Envelope::Data => "DATA".to_string(),
            };
            (line, stage(Some(c)))
        })
        .collect()
}

pub(super) fn stage(cmd: Option<&Envelope>) -> &'static str {
    match cmd {
        Some(Envelope::Mail { .. }) => "MAIL FROM",
        Some(Envelope::Rcpt(_)) => "RCPT TO",
        Some(Envelope::Data) => "DATA",
        None => "command",
    }
}

/// The group opened by MAIL on a pooled connection, retried on a fresh one when the pooled
/// one was dead (nothing has been relayed on it yet, so the retry is safe).
pub(super) async fn begin(
    up: &Upstream,
    cmds: &[Envelope],
    peer: SocketAddr,
) -> Result<(Connection, Exchanged), UpstreamError> {
    let mut conn = up.take().await?;
    let first = opening(&mut conn, up, cmds, peer).await;
    let dead = match &first {
        Ok(r) => r.first().is_some_and(|r| r.code == 421),
        Err((got, e)) => got.is_empty() && e.is_connection_failure(),
    };
    if !(conn.reused && dead) {
        return Ok((conn, first));
    }
    let mut conn = up.connect().await?;
    let r = opening(&mut conn, up, cmds, peer).await;
    Ok((conn, r))
}

/// Sends a group that opens a transaction, after `XFORWARD` when `upstream.xforward` is on
/// and the upstream offers it (pipelined with the group); the replies to the group's own
/// commands. A refused XFORWARD is logged and changes nothing else: the upstream then sees
/// pixelrelay as the client.
async fn opening(
    conn: &mut Connection,
    up: &Upstream,
    cmds: &[Envelope],
    peer: SocketAddr,
) -> Exchanged {
    let mut wire = Vec::new();
    if up.xforward
        && !conn.ext.xforward.is_empty()
        && let Some(Envelope::Mail { queue_id, helo, .. }) = cmds.first()
    {
        let client = xforward::OriginalClient {
            addr: peer.ip(),
            port: peer.port(),
            helo: helo.as_ref().map(|(h, e)| (h.as_str(), *e)),
            queue_id,
        };
        wire.extend(
            xforward::commands(&conn.ext.xforward, &client)
                .into_iter()
                .map(|l| (l, "XFORWARD")),
        );
    }
    let extra = wire.len();
    wire.extend(lines(cmds, conn));
    let strip = |mut got: Vec<Reply>| {
        for r in got.iter().take(extra).filter(|r| !r.is_positive()) {
            warn!(client = %peer, reply = %r.lines.join(" "), event = "xforward_refused", "upstream refused XFORWARD (smtpd_authorized_xforward_hosts?)");
        }
        if got.len() > extra {
            got.drain(..extra);
            got
        } else {
            // The upstream stopped within XFORWARD (a 421, or the connection gone): a refusal
            // there answers the group, as one to MAIL would.
            got.pop().into_iter().filter(|r| !r.is_positive()).collect()
        }
    };
    match conn.exchange(&wire).await {
        Ok(got) => Ok(strip(got)),
        Err((got, e)) => Err((strip(got), e)),
    }
}

/// The upstream's replies to a group, or the ones before an error and the error.
pub(super) type Exchanged = Result<Vec<Reply>, (Vec<Reply>, UpstreamError)>;
