//! The portal's web pages: the built front end (`web-portal/dist`, made by `npm run build` in
//! `web-portal/`) served at `/`. Release builds carry the files inside the binary; debug builds
//! read them from `web-portal/dist` as they are asked for, so a rebuilt front end shows without
//! rebuilding the server.
//!
//! Every path that is not a file and does not look like one (`/wallet/0x…`, `/admin`) gets
//! `index.html`, where the front end's router takes over: deep links work on reload. Paths of
//! the API keep the API's JSON 404.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

#[derive(rust_embed::RustEmbed)]
#[folder = "../web-portal/dist/"]
#[allow_missing = true]
struct Site;

/// First path segments that belong to the API (besides `v1`, `v2`, …): unknown paths under
/// them are API errors, not pages.
const API_SEGMENTS: [&str; 3] = ["api", "docs", "openapi.json"];

/// Whether a path's first segment belongs to the API.
fn is_api(first: &str) -> bool {
    let versioned = first
        .strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    versioned || API_SEGMENTS.contains(&first)
}

/// What the pages may load: their own scripts and styles, images from the API and blobs.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; \
     style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'self'; form-action 'self'";

/// Shown in place of the portal when the front end was not built before the server.
const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\">\
    <title>infermine: portal not built</title><body><h1>The portal is not built</h1>\
    <p>The API is up (see <a href=\"/docs\">/docs</a>), but this coordinator has no portal \
    pages. Build them with <code>scripts/setup.sh</code> (or <code>npm --prefix web-portal ci \
    &amp;&amp; npm --prefix web-portal run build</code>), then rebuild the server.</p></body></html>";

/// The router's fallback: a portal file, the portal's `index.html` for a page, or the API's 404.
pub async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/');
    let is_read = method == Method::GET || method == Method::HEAD;
    let first = path.split('/').next().unwrap_or_default();
    if !is_read || is_api(first) {
        return api_not_found();
    }
    if !path.is_empty()
        && let Some(file) = Site::get(path)
    {
        return serve(path, file, &headers);
    }
    let last = path.rsplit('/').next().unwrap_or_default();
    if last.contains('.') {
        // A missing asset, not a page: a 404 rather than a page that would not parse as one.
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    }
    match Site::get("index.html") {
        Some(index) => serve("index.html", index, &headers),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            NOT_BUILT,
        )
            .into_response(),
    }
}

fn api_not_found() -> Response {
    ApiError::NotFound(
        "no such endpoint; see GET /v1/models, POST /v1/chat/completions and POST /v1/jobs \
         (GET /docs lists them all)"
            .to_owned(),
    )
    .into_response()
}

/// One file with its type, an ETag from its hash, and caching by kind: Vite's `assets/` carry
/// their hash in their names and never change; everything else is revalidated.
fn serve(path: &str, file: rust_embed::EmbeddedFile, headers: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|seen| seen.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut ok = Response::new(Body::from(file.data.into_owned()));
        if let Ok(mime) = HeaderValue::from_str(file.metadata.mimetype()) {
            ok.headers_mut().insert(header::CONTENT_TYPE, mime);
        }
        ok
    };
    let out = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, etag);
    }
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(path: &str) -> Response {
        fallback(Method::GET, path.parse().expect("uri"), HeaderMap::new()).await
    }

    fn content_type(response: &Response) -> &str {
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn api_paths_keep_the_api_404_and_pages_get_the_portal() {
        for path in [
            "/api/v1/nope",
            "/v1/nothing",
            "/v2/nothing",
            "/api",
            "/docs/x",
        ] {
            let response = get(path).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert!(content_type(&response).contains("json"), "{path}");
        }
        let posted = fallback(
            Method::POST,
            "/wallet/x".parse().expect("uri"),
            HeaderMap::new(),
        );
        assert_eq!(posted.await.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            get("/assets/missing-0000.js").await.status(),
            StatusCode::NOT_FOUND
        );

        // A page: the portal's index.html when it is built, else a page that says how to.
        let page = get("/wallet/0x5aeda56215b167893e80b4fe645ba6d5bab767de").await;
        assert!(content_type(&page).starts_with("text/html"));
        if Site::get("index.html").is_some() {
            assert_eq!(page.status(), StatusCode::OK);
            assert_eq!(page.headers()[header::CACHE_CONTROL], "no-cache");
            let etag = page.headers()[header::ETAG].clone();
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, etag);
            let again = fallback(Method::GET, "/admin".parse().expect("uri"), headers).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        } else {
            assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}
