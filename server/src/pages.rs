//! The pages: a live room inspector at `/` and a live-cursors demo at `/demo`.
//!
//! Both are static files from `server/assets/`, embedded in the binary with
//! `include_bytes!`, so `rollcall serve` needs no other web server, CDN or network.
//! They run in the browser on the TypeScript SDK's single-file bundle, served as
//! `/assets/rollcall-client.js`.
//!
//! Why the bundle is committed: it is built by `npm run build` into
//! `clients/typescript/dist/`, which is not in git, and `cargo build` must not need
//! Node. So `scripts/build-assets.sh` copies it into `server/assets/`, and
//! `scripts/build-assets.sh --check` (run by `scripts/test.sh`) rebuilds it from the
//! SDK's sources and fails when the committed copy differs.
//!
//! Caching: the URLs carry no content hash, so every response says `no-cache` (the
//! browser revalidates, and a new server version is picked up at once) and carries
//! an `ETag` computed at compile time, so revalidation is a `304` without a body.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// The pages load only what this server serves: scripts, styles and images from
/// its own origin, and its own WebSocket (`'self'` covers `ws:`/`wss:` to the same
/// host in CSP 3).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// One embedded file and the path it is served at.
#[derive(Debug)]
pub struct Asset {
    /// The URL path, e.g. `/assets/demo.js`.
    pub path: &'static str,
    /// The `Content-Type` it is served with.
    pub content_type: &'static str,
    /// The file's bytes.
    pub body: &'static [u8],
    /// A hash of `body` (FNV-1a, 64 bits), the `ETag`.
    pub hash: u64,
}

impl Asset {
    const fn new(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
        Asset {
            path,
            content_type,
            body,
            hash: fnv1a(body),
        }
    }

    fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

/// Every embedded file.
pub static ASSETS: &[Asset] = &[
    Asset::new("/", HTML, include_bytes!("../assets/index.html")),
    Asset::new("/demo", HTML, include_bytes!("../assets/demo.html")),
    Asset::new(
        "/assets/inspector.js",
        JAVASCRIPT,
        include_bytes!("../assets/inspector.js"),
    ),
    Asset::new(
        "/assets/demo.js",
        JAVASCRIPT,
        include_bytes!("../assets/demo.js"),
    ),
    Asset::new(
        "/assets/rollcall-client.js",
        JAVASCRIPT,
        include_bytes!("../assets/rollcall-client.js"),
    ),
    Asset::new(
        "/assets/style.css",
        CSS,
        include_bytes!("../assets/style.css"),
    ),
    Asset::new(
        "/assets/favicon.svg",
        SVG,
        include_bytes!("../assets/favicon.svg"),
    ),
];

/// The routes of every page and asset (`GET` and `HEAD`), to merge into the server's
/// router.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(asset, &headers) }),
        )
    })
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = asset.etag();
    let status = if matches_etag(request, &etag) {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let mut response = if status == StatusCode::OK {
        asset.body.into_response()
    } else {
        status.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type == HTML {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    response
}

/// Whether `If-None-Match` names `etag` (or is `*`); weak tags match too (RFC 9110
/// uses the weak comparison for `If-None-Match`).
fn matches_etag(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// FNV-1a, 64 bits: small enough to run at compile time, good enough for an `ETag`.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt as _;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        routes::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header<'a>(response: &'a Response, name: &header::HeaderName) -> &'a str {
        response.headers()[name].to_str().unwrap()
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_type_and_cache_headers() {
        for asset in ASSETS {
            let response = get(asset.path, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{}", asset.path);
            assert_eq!(header(&response, &header::CONTENT_TYPE), asset.content_type);
            assert_eq!(header(&response, &header::CACHE_CONTROL), "no-cache");
            assert_eq!(
                header(&response, &header::X_CONTENT_TYPE_OPTIONS),
                "nosniff"
            );
            assert_eq!(header(&response, &header::ETAG), asset.etag());
            let html = asset.content_type == HTML;
            assert_eq!(
                response
                    .headers()
                    .contains_key(header::CONTENT_SECURITY_POLICY),
                html,
                "{}",
                asset.path
            );
            let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
            assert_eq!(&body[..], asset.body, "{}", asset.path);
        }
    }

    #[tokio::test]
    async fn a_matching_etag_answers_304_without_a_body() {
        let asset = &ASSETS[0];
        for tag in [
            asset.etag(),
            format!("W/{}", asset.etag()),
            format!("\"other\", {}", asset.etag()),
            "*".to_owned(),
        ] {
            let response = get(asset.path, Some(&tag)).await;
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{tag}");
            assert_eq!(header(&response, &header::ETAG), asset.etag());
            let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
            assert!(body.is_empty());
        }
        let response = get(asset.path, Some("\"other\"")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn head_answers_headers_only() {
        let response = routes::<()>()
            .oneshot(Request::head("/demo").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, &header::CONTENT_TYPE), HTML);
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        assert!(body.is_empty());
    }

    /// Every `/assets/…` URL that a page or script names is one that is served.
    #[test]
    fn pages_name_only_embedded_assets() {
        for asset in ASSETS {
            if asset.content_type != HTML && asset.content_type != JAVASCRIPT {
                continue;
            }
            let text = std::str::from_utf8(asset.body).unwrap();
            for (at, _) in text.match_indices("\"/assets/") {
                let url = &text[at + 1..];
                let url = &url[..url.find('"').unwrap()];
                assert!(
                    ASSETS.iter().any(|a| a.path == url),
                    "{} names {url}, which is not embedded",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn the_sdk_bundle_is_an_es_module_exporting_create_client() {
        let bundle = ASSETS
            .iter()
            .find(|a| a.path == "/assets/rollcall-client.js")
            .unwrap();
        let text = std::str::from_utf8(bundle.body).unwrap();
        assert!(text.contains("export{") && text.contains(" as createClient"));
    }

    #[test]
    fn etags_differ_between_assets() {
        let mut hashes: Vec<u64> = ASSETS.iter().map(|a| a.hash).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), ASSETS.len());
    }
}
