//! The dashboard page (`GET /` on the admin listener): one self-contained HTML file with its
//! style and script inline, no external asset, so it works offline. The script puts every value
//! into the page with `textContent`, never as markup, and the page is sent with a
//! Content-Security-Policy that allows exactly its own inline script and style (by hash), API
//! calls to its own origin, and nothing else.
//!
//! The admin token is asked once and kept in the tab's `sessionStorage`. A link may carry it
//! as `/#token=TOKEN`: the page moves it into `sessionStorage` and removes it from the address
//! bar at once (a fragment never reaches the server or its logs).

use std::sync::OnceLock;

use base64::Engine as _;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use sha2::{Digest, Sha256};

use super::respond::{AdminBody, text};

/// The dashboard template; `{{STYLE}}` and `{{SCRIPT}}` are filled from the sibling files so
/// that their hashes can go into the Content-Security-Policy.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");
/// The dashboard's style sheet.
const DASHBOARD_CSS: &str = include_str!("dashboard.css");
/// The dashboard's script.
const DASHBOARD_JS: &str = include_str!("dashboard.js");

/// The dashboard page and its Content-Security-Policy, built once.
fn dashboard_page() -> &'static (String, String) {
    static PAGE: OnceLock<(String, String)> = OnceLock::new();
    PAGE.get_or_init(|| {
        let hash = |s: &str| {
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s.as_bytes()))
        };
        let html = DASHBOARD_HTML
            .replace("{{STYLE}}", DASHBOARD_CSS)
            .replace("{{SCRIPT}}", DASHBOARD_JS);
        let csp = format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            hash(DASHBOARD_JS),
            hash(DASHBOARD_CSS)
        );
        (html, csp)
    })
}

/// `GET /`: the page, 200 with the token, 401 (same data-free shell) without.
pub(super) fn page(authorized: bool) -> Response<AdminBody> {
    let (html, csp) = dashboard_page();
    let status = if authorized {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    let mut r = text(status, "text/html; charset=utf-8", html.clone());
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}
