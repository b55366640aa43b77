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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

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
    mut w: W,
    conn: &mut Conn,
    mut shutdown: crate::shutdown::Shutdown,
) -> Result<(), WireError> {
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

/// Bytes of framed reply gathered before they are written: a reply of a message up to this size
/// leaves in one write.
const REPLY_BATCH: usize = 256 * 1024;

/// Writes `msgs` framed (length, code, data) and flushes: one write for a reply (a body
/// replacement of a large message in writes of [`REPLY_BATCH`]). Written packet by packet,
/// a body replacement went out in three writes (the five bytes of its frame, the body, the
/// final "continue"), and each woke the MTA to read a part of the reply.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, msgs: &[ServerMessage]) -> Result<(), WireError> {
    let mut out = BytesMut::new();
    for m in msgs {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, m.code()]);
        m.write(&mut out);
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        if out.len() >= REPLY_BATCH {
            w.write_all(&out).await?;
            out.clear();
        }
    }
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use miltr_common::modifications::ModificationResponse;
    use miltr_common::modifications::body::ReplaceBody;
    use miltr_common::modifications::headers::ChangeHeader;

    use super::*;

    /// The frames of `wire`: (code, data) each.
    fn frames(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let n = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
            out.push((wire[4], wire[5..4 + n].to_vec()));
            wire = &wire[4 + n..];
        }
        out
    }

    #[tokio::test]
    async fn a_reply_is_framed_packet_by_packet_whatever_its_size() {
        // A body past the batch size, in chunks as `Conn` cuts it, between a header change
        // and the final "continue".
        let body: Vec<u8> = (0..REPLY_BATCH * 2 + 12_345).map(|i| i as u8).collect();
        let mut mods = ModificationResponse::builder();
        mods.push(ChangeHeader::new(1, b"X-Track-Opens", b""));
        for chunk in body.chunks(65_000) {
            mods.push(ReplaceBody::new(chunk));
        }
        let msgs: Vec<ServerMessage> = mods.contin().into();
        let mut w = Vec::new();
        send(&mut w, &msgs).await.unwrap();
        let got = frames(&w);
        assert_eq!(got.len(), msgs.len());
        for (m, (code, data)) in msgs.iter().zip(&got) {
            let mut want = BytesMut::new();
            m.write(&mut want);
            assert_eq!((*code, &want[..]), (m.code(), &data[..]));
        }
        let replaced: Vec<u8> = got
            .iter()
            .filter(|(c, _)| *c == b'b')
            .flat_map(|(_, d)| d.clone())
            .collect();
        assert_eq!(replaced, body);
        assert_eq!(got.last().map(|f| f.0), Some(b'c'));
    }
}
