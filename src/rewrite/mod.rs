//! The rewrite core: decides whether a message gets a tracking pixel and, if so, splices
//! `<img>` markup into its first HTML part. Pure: no IO, no SMTP, no clock, so the SMTP relay,
//! the capture mode and a future milter front end all call the same function.
//!
//! (Skeleton: the full implementation lands with the rewrite work. Until then every message
//! is forwarded unchanged, which is always safe.)

use crate::config::OnDkimSigned;

/// The envelope as the upstream accepted it.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// MAIL FROM address (may be empty for bounces).
    pub sender: &'a str,
    /// RCPT TO addresses the upstream accepted.
    pub recipients: &'a [String],
}

/// What the tracking policy allows; built once from `[tracking]`.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Prefix every pixel URL of this instance starts with (`{base_url}/o/`): used to spot a
    /// message that already carries one of our pixels.
    pub pixel_prefix: String,
    /// DKIM-signed mail policy.
    pub on_dkim_signed: OnDkimSigned,
    /// Opt-out header name (case-insensitive); always removed before forwarding.
    pub opt_out_header: String,
    /// When non-empty, only these sender domains are tracked (lowercase).
    pub sender_domains: Vec<String>,
    /// Recipient domains never tracked (lowercase).
    pub exclude_recipient_domains: Vec<String>,
    /// Larger messages are not rewritten.
    pub max_rewrite_size: u64,
}

/// Why a message was forwarded without a pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Tracking is switched off.
    Disabled,
    /// Not exactly one accepted recipient.
    Recipients,
    /// No HTML part that is not an attachment.
    NoHtml,
    /// `multipart/signed` somewhere in the tree.
    Signed,
    /// `multipart/encrypted` somewhere in the tree.
    Encrypted,
    /// Carries a `DKIM-Signature` and the policy says skip.
    DkimSigned,
    /// Carries the opt-out header.
    OptOut,
    /// Sender domain not in `tracking.sender_domains`.
    SenderDomain,
    /// Recipient domain in `tracking.exclude_recipient_domains`.
    RecipientDomain,
    /// Larger than `tracking.max_rewrite_size`.
    TooLarge,
    /// The HTML part already holds one of our pixels.
    AlreadyTracked,
    /// The HTML part's charset is not ASCII-compatible (UTF-16/32).
    Charset,
    /// The parser could not make sense of the message.
    Unparseable,
    /// The store could not record the message, so it went out without a pixel.
    Store,
}

impl SkipReason {
    /// Stable name for logs, metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Disabled => "disabled",
            SkipReason::Recipients => "recipients",
            SkipReason::NoHtml => "no_html",
            SkipReason::Signed => "signed",
            SkipReason::Encrypted => "encrypted",
            SkipReason::DkimSigned => "dkim_signed",
            SkipReason::OptOut => "opt_out",
            SkipReason::SenderDomain => "sender_domain",
            SkipReason::RecipientDomain => "recipient_domain",
            SkipReason::TooLarge => "too_large",
            SkipReason::AlreadyTracked => "already_tracked",
            SkipReason::Charset => "charset",
            SkipReason::Unparseable => "unparseable",
            SkipReason::Store => "store_error",
        }
    }
}

/// The tracking decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The pixel was inserted.
    Tracked,
    /// Forwarded without a pixel, for this reason.
    Skipped(SkipReason),
}

/// Header facts the store keeps about every relayed message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageInfo {
    /// `Message-ID:` as written, with angle brackets.
    pub message_id: Option<String>,
    /// Decoded `Subject:`.
    pub subject: Option<String>,
}

/// What `rewrite` produced.
#[derive(Debug, Clone)]
pub struct Rewritten {
    /// The bytes to forward, or `None` to forward the input unchanged (no copy).
    pub message: Option<Vec<u8>>,
    /// Tracked or skipped, and why.
    pub decision: Decision,
    /// Header facts, when the headers could be parsed.
    pub info: MessageInfo,
}

/// Decides and, when eligible, inserts the pixel pointing at `pixel_url`.
///
/// `message` is the unstuffed DATA content with CRLF line ends. Never panics, whatever the input.
pub fn rewrite(env: &Envelope<'_>, message: &[u8], pixel_url: &str, policy: &Policy) -> Rewritten {
    let _ = (env, message, pixel_url, policy);
    Rewritten {
        message: None,
        decision: Decision::Skipped(SkipReason::Disabled),
        info: MessageInfo::default(),
    }
}
