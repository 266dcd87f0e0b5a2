//! Serving the built web app (trunk's `dist/`): the files, a strict Content-Security-Policy, and cache headers.
//!
//! The CSP allows scripts from the page's own origin only, plus the one inline module script Trunk writes into
//! `index.html` to load the wasm (allowed by its SHA-256, computed when the relay starts), and WebAssembly
//! compilation (`'wasm-unsafe-eval'`). WebSockets may go to any `ws:`/`wss:` host (the `?relay=` development
//! switch). Caching: files whose names carry Trunk's content hash (`name-0123456789abcdef.ext`) are immutable for
//! a year; everything else (`index.html`, the worklet) is revalidated on every load, so a new release is picked
//! up at once.

use std::path::Path;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

/// The policy for a page whose inline scripts hash to `inline_hashes` (base64 SHA-256 each).
pub fn content_security_policy(inline_hashes: &[String]) -> String {
    let inline: String = inline_hashes.iter().map(|h| format!(" 'sha256-{h}'")).collect();
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'{inline}; style-src 'self'; img-src 'self' data:; \
         media-src 'self' blob:; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
}

/// SHA-256 (base64) of every inline `<script>` (one without `src`) in `html`.
pub fn inline_script_hashes(html: &str) -> Vec<String> {
    let mut hashes = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<script") {
        let Some(open_end) = rest[start..].find('>') else { break };
        let tag = &rest[start..start + open_end];
        let body_start = start + open_end + 1;
        let Some(close) = rest[body_start..].find("</script>") else { break };
        if !tag.contains(" src=") {
            hashes.push(BASE64.encode(Sha256::digest(&rest.as_bytes()[body_start..body_start + close])));
        }
        rest = &rest[body_start + close + "</script>".len()..];
    }
    hashes
}

/// Whether a file name carries a content hash (`style-df7824f1b6b3b1d3.css`, `app-0123456789abcdef_bg.wasm`).
fn is_hashed(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or_default();
    let stem = name.split('.').next().unwrap_or_default().trim_end_matches("_bg");
    stem.rsplit_once('-').is_some_and(|(_, h)| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Adds the static files under `dir` to `router` as its fallback, with the security and cache headers.
pub fn serve(router: Router, dir: &Path) -> Router {
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap_or_default();
    let csp = HeaderValue::from_str(&content_security_policy(&inline_script_hashes(&html)))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"));
    let files = tower_http::services::ServeDir::new(dir).append_index_html_on_directories(true);
    router.fallback_service(Router::new().fallback_service(files).layer(middleware::from_fn(
        move |req: Request, next: Next| {
            let csp = csp.clone();
            async move {
                let hashed = is_hashed(req.uri().path());
                let mut response: Response = next.run(req).await;
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_SECURITY_POLICY, csp);
                headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
                headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
                let cache = if hashed { "public, max-age=31536000, immutable" } else { "no-cache" };
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
                response
            }
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_scripts_are_hashed_and_external_ones_are_not() {
        let html = "<script type=\"module\">init();</script><script src=\"/a.js\"></script><script>x</script>";
        let hashes = inline_script_hashes(html);
        assert_eq!(hashes, [BASE64.encode(Sha256::digest(b"init();")), BASE64.encode(Sha256::digest(b"x"))]);
        assert!(content_security_policy(&hashes).contains(&format!("'sha256-{}'", hashes[0])));
    }

    #[test]
    fn only_content_hashed_names_are_immutable() {
        assert!(is_hashed("/soundline-web-26728cd5d364fc35_bg.wasm"));
        assert!(is_hashed("/style-df7824f1b6b3b1d3.css"));
        assert!(!is_hashed("/"));
        assert!(!is_hashed("/index.html"));
        assert!(!is_hashed("/capture-worklet.js"));
    }
}
