//! A milter that does nothing, as cheaply as a milter can: the floor any milter costs Postfix.
//!
//! It negotiates what pixelrelay's milter negotiates (the same stages left out, no reply to
//! the envelope, header fields and body, only the `i` macro at end-of-message), reads every
//! packet, and answers "continue" at end-of-message without looking at the message.
//! `bench/milter.sh` runs Postfix with it beside Postfix with pixelrelay's milter.
//!
//! Usage: nullmilter ADDRESS:PORT | nullmilter unix:PATH

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
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8892".to_string());
    if let Some(path) = addr.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        println!("READY unix:{path}");
        loop {
            let (s, _) = listener.accept().await?;
            tokio::spawn(async move {
                let (r, w) = s.into_split();
                if let Err(e) = converse(r, w, |_| {}).await {
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
            if let Err(e) = converse(r, w, ack).await {
                eprintln!("nullmilter: {e}");
            }
        });
    }
}

async fn converse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: R,
    mut w: W,
    ack: impl Fn(&R),
) -> std::io::Result<()> {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
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
                out.extend_from_slice(&0x100u32.to_be_bytes());
                out.extend_from_slice(&(PROTOCOL & theirs).to_be_bytes());
                out.extend_from_slice(macros);
                w.write_all(&out).await?;
            }
            b'E' => w.write_all(&[0, 0, 0, 1, b'c']).await?,
            b'Q' => return Ok(()),
            // Macros, envelope, header fields, body, abort, QUIT_NC: no reply asked.
            _ => {}
        }
    }
}
