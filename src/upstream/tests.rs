//! Tests of reading the upstream's replies.

use super::*;

async fn parse(bytes: &[u8]) -> Result<Reply, UpstreamError> {
    let mut io = bytes;
    let mut buf = Vec::new();
    read_reply(&mut io, &mut buf, "test").await
}

#[tokio::test]
async fn reads_single_and_multi_line_replies() {
    let r = parse(b"250-mx.example\r\n250-SIZE 1000\r\n250 8BITMIME\r\n")
        .await
        .unwrap();
    assert_eq!(r.code, 250);
    assert_eq!(r.lines, vec!["mx.example", "SIZE 1000", "8BITMIME"]);
    let e = Extensions::parse(&r);
    assert!(e.size && e.eight_bit && !e.dsn);
    assert_eq!(parse(b"354\r\n").await.unwrap().code, 354);
}

#[tokio::test]
async fn rejects_garbage_and_truncation() {
    assert!(matches!(
        parse(b"hello\r\n").await,
        Err(UpstreamError::Protocol(..))
    ));
    assert!(matches!(
        parse(b"250-a\r\n550 b\r\n").await,
        Err(UpstreamError::Protocol(..))
    ));
    assert!(matches!(
        parse(b"250-a\r\n").await,
        Err(UpstreamError::Closed(_))
    ));
    let long = vec![b'2'; MAX_REPLY_LINE + 10];
    assert!(matches!(
        parse(&long).await,
        Err(UpstreamError::Protocol(..))
    ));
}
