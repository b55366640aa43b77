//! The admin listener's answers: the response body (a buffer or a follow stream), API errors,
//! and the JSON and text responses every route builds.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::store::StoreError;

/// A response body: a whole buffer, or the lines of a follow stream.
pub enum AdminBody {
    /// Sent at once.
    Full(Option<Bytes>),
    /// Chunks from the follower's task; ends when the task drops its sender.
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for AdminBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            AdminBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            AdminBody::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, AdminBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AdminBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            AdminBody::Full(None) => SizeHint::with_exact(0),
            AdminBody::Stream(_) => SizeHint::default(),
        }
    }
}

/// An error answer: status and message.
pub(super) struct ApiError(pub(super) StatusCode, pub(super) String);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadCursor(c) => {
                ApiError(StatusCode::BAD_REQUEST, format!("invalid cursor {c:?}"))
            }
            e => {
                tracing::error!(error = %e, "admin API: store failure");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "store failure".into())
            }
        }
    }
}

pub(super) fn bad(msg: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg)
}

pub(super) type ApiResult = Result<Response<AdminBody>, ApiError>;

pub(super) fn unauthorized() -> Response<AdminBody> {
    let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"pixelrelay admin\""),
    );
    r
}

pub(super) fn error(status: StatusCode, msg: &str) -> Response<AdminBody> {
    let body = serde_json::json!({ "error": msg }).to_string();
    text(status, "application/json", body)
}

pub(super) fn json<T: Serialize>(status: StatusCode, v: &T) -> ApiResult {
    let body = serde_json::to_string(v).map_err(|e| {
        tracing::error!(error = %e, "admin API: cannot encode");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "encoding failure".into())
    })?;
    Ok(text(status, "application/json", body))
}

pub(super) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<AdminBody> {
    let mut r = Response::new(AdminBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
