//! The web chat: static files from `crates/server/ui/`, compiled into the
//! binary, served at `/` and `/ui/<file>`.
//!
//! They hold no data, so they need no API key and are served while the
//! server drains (the page then shows the API's 503 message instead of a
//! bare JSON error). `Cache-Control: no-cache` plus a content hash as the
//! `ETag` makes browsers revalidate, so a new binary's files are picked up
//! at once and an unchanged file costs a 304. The CSP allows nothing but
//! this origin: no inline scripts or styles, no frames, no other hosts.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// The page's Content-Security-Policy (all scripts and styles are files).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the UI has; `index.html` is also `/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../ui/index.html"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../ui/app.css"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_str!("../ui/api.js"),
    },
    Asset {
        name: "views.js",
        content_type: JS,
        body: include_str!("../ui/views.js"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_str!("../ui/app.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../ui/icon.svg"),
    },
];

/// The routes this module answers (the `gate` lets them through unauthenticated).
pub const ROUTES: [&str; 2] = ["/", "/ui/{file}"];

/// `"<sha256 prefix>"` per asset, computed once.
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let h = Sha256::digest(a.body.as_bytes());
                let hex: String = h[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

pub async fn file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(&file, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return crate::errors::ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("No UI file `{name}`."),
        )
        .code("not_found")
        .into_response();
    };
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(name: &str, if_none_match: Option<&str>) -> Response {
        let mut h = HeaderMap::new();
        if let Some(v) = if_none_match.and_then(|t| HeaderValue::from_str(t).ok()) {
            h.insert(header::IF_NONE_MATCH, v);
        }
        serve(name, &h)
    }

    fn header_of(r: &Response, name: header::HeaderName) -> &str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[test]
    fn files_have_types_cache_and_csp() {
        for a in ASSETS {
            let r = get(a.name, None);
            assert_eq!(r.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(header_of(&r, header::CONTENT_TYPE), a.content_type);
            assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-cache");
            assert_eq!(header_of(&r, header::CONTENT_SECURITY_POLICY), CSP);
            assert!(header_of(&r, header::ETAG).starts_with('"'));
        }
        assert_eq!(get("nope.js", None).status(), StatusCode::NOT_FOUND);
        assert_eq!(get("../Cargo.toml", None).status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_matching_etag_gets_304() {
        let tag = header_of(&get("app.js", None), header::ETAG).to_string();
        assert_eq!(get("app.js", Some(&tag)).status(), StatusCode::NOT_MODIFIED);
        let other = format!("\"x\", {tag}");
        assert_eq!(
            get("app.js", Some(&other)).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(get("app.js", Some("\"stale\"")).status(), StatusCode::OK);
        // A tag of one file does not validate another.
        assert_eq!(get("app.css", Some(&tag)).status(), StatusCode::OK);
    }

    /// The CSP forbids inline code: the page must load everything from
    /// files this module serves.
    #[test]
    fn the_page_has_no_inline_code_and_links_only_served_files() {
        let html = ASSETS[0].body;
        for bad in [" style=", " onclick=", " onload=", "<style", "javascript:"] {
            assert!(!html.contains(bad), "index.html contains {bad}");
        }
        for part in html.split("<script").skip(1) {
            let tag = part.split('>').next().unwrap_or("");
            assert!(tag.contains("src=\"/ui/"), "inline <script{tag}>");
        }
        for part in html.split("\"/ui/").skip(1) {
            let name = part.split('"').next().unwrap_or("");
            assert!(ASSETS.iter().any(|a| a.name == name), "{name} not served");
        }
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            assert!(!a.body.contains("innerHTML"), "{} uses innerHTML", a.name);
            assert!(!a.body.contains("eval("), "{} uses eval", a.name);
        }
    }
}
