//! One milter conversation on the wire: packets framed and parsed with `miltr-common`, the
//! stages handed to [`Conn`], and the replies written back.
//!
//! Why not `miltr_server::Server`: it answers every stage, so it cannot negotiate the "no
//! reply" protocol flags (`SMFIP_NR_*`) that let the MTA stream a message's envelope, header
//! fields and body without waiting for an answer to each. With them the MTA waits once per
//! message (at end-of-message) instead of once per header field and body chunk: about twenty
//! round trips fewer per message. The connect, HELO, DATA, end-of-header and unknown-command
//! stages are not sent at all (`SMFIP_NO*`): pixelrelay needs none of them. Of the macros it
//! asks for the queue id alone, at end-of-message (`SMFIF_SETSYMLIST`), so the MTA expands
//! and sends none of its default lists at the other stages.

use bytes::BytesMut;
use miltr_common::actions::{Action, Continue};
use miltr_common::decoding::ClientCommand;
use miltr_common::encoding::{ServerMessage, Writable};
use miltr_common::optneg::{Capability, MacroStage, OptNeg, Protocol};
use miltr_server::Milter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use super::conn::Conn;

/// Largest packet accepted (the MTA sends body chunks of at most 64 KiB).
const MAX_PACKET: usize = 1 << 17;

/// The milter may ask for its own macro lists (`SMFIF_SETSYMLIST`, which `miltr-common` does
/// not name).
const SMFIF_SETSYMLIST: Capability = Capability::from_bits_retain(0x100);

/// The stages pixelrelay does not need, and those it answers no reply to.
fn wanted() -> Protocol {
    Protocol::NO_CONNECT
        | Protocol::NO_HELO
        | Protocol::NO_DATA
        | Protocol::NO_END_OF_HEADER
        | Protocol::NO_UNKNOWN
        | Protocol::NR_CONNECT
        | Protocol::NR_HELO
        | Protocol::NR_MAIL
        | Protocol::NR_RECIPIENT
        | Protocol::NR_DATA
        | Protocol::NR_UNKNOWN
        | Protocol::NR_END_OF_HEADER
        | Protocol::NR_HEADER
        | Protocol::NR_BODY
}

/// Why a conversation ended badly.
#[derive(Debug)]
pub(super) enum WireError {
    Io(std::io::Error),
    Protocol(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> WireError {
        WireError::Io(e)
    }
}

/// The reading side of a milter socket.
pub(super) trait Reader: AsyncRead + Unpin {
    /// Asks the kernel to acknowledge what arrives at once. With the no-reply flags the MTA
    /// streams small packets that nothing answers; its Nagle algorithm would then hold each
    /// one until our delayed ACK (~40 ms on Linux), a stall per message. Reset by the kernel
    /// after a while, so asked again whenever what was read is used up.
    fn ack_now(&self) {}
}

impl Reader for tokio::net::tcp::ReadHalf<'_> {
    fn ack_now(&self) {
        let _ = rustix::net::sockopt::set_tcp_quickack(self.as_ref(), true);
    }
}

impl Reader for tokio::net::unix::ReadHalf<'_> {}

impl<T: AsyncRead + Unpin> Reader for tokio::io::ReadHalf<T> {}

/// Holds the conversation on `r`/`w` until the MTA quits or closes.
///
/// Once `shutdown` begins, the conversation ends at the next point between messages (the MTA
/// opens a new connection, or applies its default action while pixelrelay is down), so that
/// no connection the MTA keeps for later sessions outlives pixelrelay's stop.
pub(super) async fn converse<R: Reader, W: AsyncWrite + Unpin>(
    r: R,
    w: W,
    conn: &mut Conn,
    mut shutdown: crate::shutdown::Shutdown,
) -> Result<(), WireError> {
    let mut w = BufWriter::new(w);
    let mut r = Quick(BufReader::new(r));
    // What the negotiation settled: replies left out, modifications allowed.
    let mut silent = Protocol::empty();
    let mut allowed = Capability::all();
    loop {
        let mut len = [0u8; 4];
        let read = if conn.idle() {
            tokio::select! {
                () = shutdown.wait() => return Ok(()),
                read = r.0.read_exact(&mut len) => read,
            }
        } else {
            r.0.read_exact(&mut len).await
        };
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 || n > MAX_PACKET {
            return Err(WireError::Protocol(format!("packet of {n} bytes")));
        }
        let mut buf = BytesMut::zeroed(n);
        r.0.read_exact(&mut buf).await?;
        // Once per read from the socket, not per packet: a read brings many packets, and the
        // option costs a system call (4 % of the milter's CPU when asked per packet).
        if r.0.buffer().is_empty() {
            r.0.get_ref().ack_now();
        }
        let cmd = ClientCommand::parse(buf).map_err(|e| WireError::Protocol(e.to_string()))?;
        let (reply, quiet): (Option<Action>, Protocol) = match cmd {
            ClientCommand::OptNeg(theirs) => {
                let mut ours = OptNeg {
                    capabilities: Capability::SMFIF_CHGBODY
                        | Capability::SMFIF_CHGHDRS
                        | SMFIF_SETSYMLIST,
                    protocol: wanted(),
                    ..OptNeg::default()
                };
                // Only the queue id, at end-of-message: the MTA then expands and sends no
                // other macro at any stage (Postfix's defaults are some twenty per message).
                ours.macro_stages.with_stage(MacroStage::EndOfBody, &["i"]);
                let ours = ours
                    .merge_compatible(&theirs)
                    .map_err(|e| WireError::Protocol(e.to_string()))?;
                silent = ours.protocol;
                allowed = ours.capabilities;
                send(&mut w, &[ServerMessage::Optneg(ours)]).await?;
                continue;
            }
            ClientCommand::Macro(m) => {
                let _ = conn.macro_(m).await;
                continue;
            }
            ClientCommand::Connect(_) => (Some(Continue.into()), Protocol::NR_CONNECT),
            ClientCommand::Helo(_) => (Some(Continue.into()), Protocol::NR_HELO),
            ClientCommand::Mail(m) => (conn.mail(m).await.ok(), Protocol::NR_MAIL),
            ClientCommand::Recipient(rc) => (conn.rcpt(rc).await.ok(), Protocol::NR_RECIPIENT),
            ClientCommand::Data(_) => (Some(Continue.into()), Protocol::NR_DATA),
            ClientCommand::Header(h) => (conn.header(h).await.ok(), Protocol::NR_HEADER),
            ClientCommand::EndOfHeader(_) => (Some(Continue.into()), Protocol::NR_END_OF_HEADER),
            ClientCommand::Body(b) => (conn.body(b).await.ok(), Protocol::NR_BODY),
            ClientCommand::Unknown(_) => (Some(Continue.into()), Protocol::NR_UNKNOWN),
            ClientCommand::EndOfBody(_) => {
                let Ok(mut resp) = conn.end_of_body().await;
                resp.filter_mods_by_caps(allowed);
                let msgs: Vec<ServerMessage> = resp.into();
                send(&mut w, &msgs).await?;
                continue;
            }
            ClientCommand::Abort(_) => {
                let _ = conn.abort().await;
                continue;
            }
            ClientCommand::Quit(_) => return Ok(()),
            ClientCommand::QuitNc(_) => continue,
        };
        if !silent.contains(quiet) {
            let reply = reply.unwrap_or_else(|| Continue.into());
            send(&mut w, &[ServerMessage::Action(reply)]).await?;
        }
    }
}

/// The buffered reader of a conversation.
struct Quick<R>(BufReader<R>);

/// Writes `msgs` framed (length, code, data) and flushes: one write for a whole reply.
async fn send<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    msgs: &[ServerMessage],
) -> Result<(), WireError> {
    let mut data = BytesMut::new();
    for m in msgs {
        data.clear();
        m.write(&mut data);
        w.write_all(&((data.len() + 1) as u32).to_be_bytes())
            .await?;
        w.write_all(&[m.code()]).await?;
        w.write_all(&data).await?;
    }
    w.flush().await?;
    Ok(())
}
