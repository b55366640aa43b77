//! A milter that does nothing, as cheaply as a milter can: the floor any milter costs Postfix.
//!
//! It negotiates what pixelrelay's milter negotiates (the same stages left out, no reply to
//! the envelope, header fields and body, only the `i` macro at end-of-message), reads every
//! packet, and answers "continue" at end-of-message without looking at the message.
//! `bench/milter.sh` runs Postfix with it beside Postfix with pixelrelay's milter.
//!
//! With `--replace-body` it also collects the body and sends it back at end-of-message as a
//! body replacement, with 160 bytes appended after it (about what a pixel adds): the floor for
//! any milter that rewrites the body, Postfix's cost of taking a new body into its queue file
//! included.
//!
//! Usage: nullmilter [--replace-body] ADDRESS:PORT | nullmilter [--replace-body] unix:PATH

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};

/// `SMFIP_NOCONNECT | NOHELO | NODATA | NOEOH | NOUNKNOWN` and every `SMFIP_NR_*` but the
/// end-of-message's: what pixelrelay's milter asks for.
const PROTOCOL: u32 = 0x01
    | 0x02
    | 0x200
    | 0x40
    | 0x100
    | 0x1000
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000
    | 0x40000
    | 0x80
    | 0x80000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let replace = args.first().is_some_and(|a| a == "--replace-body");
    if replace {
        args.remove(0);
    }
    let addr = args
        .into_iter()
        .next()
        .unwrap_or_else(|| "127.0.0.1:8892".to_string());
    if let Some(path) = addr.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        println!("READY unix:{path}");
        loop {
            let (s, _) = listener.accept().await?;
            tokio::spawn(async move {
                let (r, w) = s.into_split();
                if let Err(e) = converse(r, w, |_| {}, replace).await {
                    eprintln!("nullmilter: {e}");
                }
            });
        }
    }
    let listener = TcpListener::bind(&addr).await?;
    println!("READY {}", listener.local_addr()?);
    loop {
        let (s, _) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let (r, w) = s.into_split();
            // As pixelrelay's milter: acknowledge at once what the MTA streams.
            let ack = |r: &tokio::net::tcp::OwnedReadHalf| {
                let _ = rustix::net::sockopt::set_tcp_quickack(r.as_ref(), true);
            };
            if let Err(e) = converse(r, w, ack, replace).await {
                eprintln!("nullmilter: {e}");
            }
        });
    }
}

async fn converse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: R,
    mut w: W,
    ack: impl Fn(&R),
    replace: bool,
) -> std::io::Result<()> {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    let mut body = Vec::new();
    loop {
        let len = match r.read_u32().await {
            Ok(n) => n as usize,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if len == 0 || len > 1 << 17 {
            return Err(std::io::Error::other(format!("packet of {len} bytes")));
        }
        buf.resize(len, 0);
        r.read_exact(&mut buf).await?;
        ack(r.get_ref());
        match buf[0] {
            b'O' if len >= 13 => {
                let theirs = u32::from_be_bytes([buf[9], buf[10], buf[11], buf[12]]);
                let mut out = Vec::with_capacity(32);
                let macros = b"\0\0\0\x05i\0";
                out.extend_from_slice(&(13 + macros.len() as u32).to_be_bytes());
                out.push(b'O');
                out.extend_from_slice(&6u32.to_be_bytes());
                // SMFIF_SETSYMLIST, and with a body replacement SMFIF_CHGBODY.
                let actions: u32 = if replace { 0x100 | 0x02 } else { 0x100 };
                out.extend_from_slice(&actions.to_be_bytes());
                out.extend_from_slice(&(PROTOCOL & theirs).to_be_bytes());
                out.extend_from_slice(macros);
                w.write_all(&out).await?;
            }
            b'B' if replace => body.extend_from_slice(&buf[1..]),
            b'E' if replace => {
                // As pixelrelay's milter: the replacement and "continue" in one write, the body
                // in packets of at most 64 KB.
                body.extend_from_slice(&[b'.'; 158]);
                body.extend_from_slice(b"\r\n");
                let mut out = Vec::with_capacity(body.len() + 64);
                for chunk in body.chunks(65535) {
                    out.extend_from_slice(&(chunk.len() as u32 + 1).to_be_bytes());
                    out.push(b'b');
                    out.extend_from_slice(chunk);
                }
                out.extend_from_slice(&[0, 0, 0, 1, b'c']);
                w.write_all(&out).await?;
                body.clear();
            }
            b'A' => body.clear(),
            b'E' => w.write_all(&[0, 0, 0, 1, b'c']).await?,
            b'Q' => return Ok(()),
            // Macros, envelope, header fields, body, abort, QUIT_NC: no reply asked.
            _ => {}
        }
    }
}
