//! Who may use the listener: every request through [`guard`].
//!
//! - With `[http] token` (required off loopback, see `crate::daemon::config`), every page and API
//!   answers 401 unless the request carries the token: `Authorization: Bearer <token>`, or the
//!   cookie [`COOKIE`] that opening any page with `?token=<token>` sets (the answer then
//!   redirects to the same address without it, so that the token leaves the address bar and
//!   the history).
//! - Requests that change something (any method but GET, HEAD and OPTIONS) sent by a browser
//!   must come from the console's own origin: an `Origin` (or `Sec-Fetch-Site`) that says
//!   another site answers 403, also on loopback, so that a web page the user visits cannot
//!   post reviews or label files to the daemon on their machine.
//! - Without a token, a request must name the server by a loopback name in `Host`
//!   (`localhost`, `127.0.0.1`, `[::1]`), so that a page of another site resolved to
//!   127.0.0.1 (DNS rebinding) reads nothing.

use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::daemon::secret::Secret;

/// The cookie that carries the token for the browser.
pub const COOKIE: &str = "clipfilter_token";

/// What [`guard`] checks against.
#[derive(Debug, Clone)]
pub struct Guard {
    /// `None`: no token asked (loopback); a configuration reload changes it.
    pub token: Arc<RwLock<Option<Secret>>>,
}

/// Equal without telling how much of it was (the time does not depend on where they differ).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The token the request carries, if any (bearer first, then the cookie).
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(bearer) = header_text(headers, header::AUTHORIZATION).and_then(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
    }) {
        return Some(bearer.trim());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|c| c.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// `Err` when a browser says the request comes from another site.
fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    if let Some(site) = header_text(headers, header::HeaderName::from_static("sec-fetch-site"))
        && !matches!(site, "same-origin" | "none")
    {
        return Err(format!("a {site} request may not change anything here"));
    }
    let Some(origin) = header_text(headers, header::ORIGIN) else {
        // Not a browser (curl, a script): nothing to forge for.
        return Ok(());
    };
    let host = header_text(headers, header::HOST).unwrap_or_default();
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or(origin);
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(format!("origin {origin} may not change anything here"))
    }
}

/// Whether a `Host` header names this machine's loopback (`localhost`, `127.0.0.1:9464`,
/// `[::1]:9464`).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text + "\n",
    )
        .into_response()
}

fn unauthorized() -> Response {
    let mut r = plain(
        StatusCode::UNAUTHORIZED,
        "a token is needed: `Authorization: Bearer <token>`, or open /?token=<token> once".into(),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// The `token` query parameter and the query without it.
fn split_token(query: &str) -> (Option<String>, String) {
    let mut token = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("token", value)) => {
                token = Some(
                    percent_encoding::percent_decode_str(value)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
            }
            _ => rest.push(pair),
        }
    }
    (token, rest.join("&"))
}

/// The middleware (see the module).
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let changes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if changes && let Err(why) = same_origin(request.headers()) {
        return plain(StatusCode::FORBIDDEN, why);
    }
    let token = guard
        .token
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some(token) = token else {
        // Without a token only this machine may ask, by a loopback name: a web page whose
        // name an attacker points at 127.0.0.1 (DNS rebinding) is refused.
        let host = header_text(request.headers(), header::HOST).unwrap_or_default();
        if !loopback_host(host) {
            return plain(
                StatusCode::FORBIDDEN,
                format!("host {host:?} is not a loopback name: set [http] token to serve others"),
            );
        }
        return next.run(request).await;
    };
    let want = token.expose().as_bytes();
    if let Some(query) = request.uri().query()
        && let (Some(given), rest) = split_token(query)
    {
        if !same(given.as_bytes(), want) {
            return unauthorized();
        }
        let path = request.uri().path();
        let location = if rest.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{rest}")
        };
        let cookie = format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            token.expose()
        );
        return match (
            header::HeaderValue::from_str(&location),
            header::HeaderValue::from_str(&cookie),
        ) {
            (Ok(location), Ok(cookie)) => (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, location), (header::SET_COOKIE, cookie)],
            )
                .into_response(),
            // A token that cannot be a cookie: the bearer header still works.
            _ => plain(
                StatusCode::BAD_REQUEST,
                "this token cannot be kept in a cookie; send `Authorization: Bearer <token>`"
                    .into(),
            ),
        };
    }
    match presented(request.headers()) {
        Some(given) if same(given.as_bytes(), want) => next.run(request).await,
        _ => unauthorized(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcdef", b"abcdef"));
        assert!(!same(b"abcdef", b"abcdeg"));
        assert!(!same(b"abc", b"abcdef"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn loopback_names() {
        for host in [
            "localhost:9464",
            "127.0.0.1:9464",
            "127.0.0.2",
            "[::1]:9464",
            "LOCALHOST",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:9464",
            "10.0.0.1:9464",
            "",
            "[::2]:1",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }

    #[test]
    fn the_token_leaves_the_query() {
        assert_eq!(
            split_token("token=a%20b&x=1"),
            (Some("a b".into()), "x=1".into())
        );
        assert_eq!(split_token("x=1"), (None, "x=1".into()));
    }

    #[test]
    fn other_origins_may_not_change_anything() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:9464".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, "http://127.0.0.1:9464".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.insert(header::ORIGIN, "http://127.0.0.1:9464".parse().unwrap());
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(same_origin(&h).is_err());
    }
}
