//! Serving the built web app (trunk's `dist/`): the files, a strict Content-Security-Policy, and cache headers.
//!
//! The CSP allows scripts from the page's own origin only, plus the one inline module script Trunk writes into
//! `index.html` to load the wasm (allowed by its SHA-256, computed when the relay starts), and WebAssembly
//! compilation (`'wasm-unsafe-eval'`). WebSockets may go to any `ws:`/`wss:` host (the `?relay=` development
//! switch). Caching: files whose names carry Trunk's content hash (`name-0123456789abcdef.ext`) are immutable for
//! a year; everything else (`index.html`, the worklet) is revalidated on every load, so a new release is picked
//! up at once. The policy follows `index.html` as it changes on disk, so a page rebuilt by `trunk watch` (what
//! `make run` runs beside the relay) loads without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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

/// The policy for the `index.html` in a directory, kept up to date: `trunk watch` (under `make run`) rewrites the
/// page on every change, and its inline loader script changes with the module's hashed name. A std Mutex, held
/// only to compare a modification time and clone a header value.
struct Policy {
    index: PathBuf,
    cached: Mutex<(Option<SystemTime>, HeaderValue)>,
}

impl Policy {
    fn new(dir: &Path) -> Self {
        let index = dir.join("index.html");
        Self { index, cached: Mutex::new((None, HeaderValue::from_static("default-src 'self'"))) }
    }

    /// The policy for the page as it is on disk now (re-read only when its modification time changed).
    fn current(&self) -> HeaderValue {
        let modified = std::fs::metadata(&self.index).and_then(|m| m.modified()).ok();
        let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if modified.is_some() && cached.0 != modified {
            let html = std::fs::read_to_string(&self.index).unwrap_or_default();
            if let Ok(csp) = HeaderValue::from_str(&content_security_policy(&inline_script_hashes(&html))) {
                *cached = (modified, csp);
            }
        }
        cached.1.clone()
    }
}

/// Adds the static files under `dir` to `router` as its fallback, with the security and cache headers.
pub fn serve(router: Router, dir: &Path) -> Router {
    let policy = Arc::new(Policy::new(dir));
    let files = tower_http::services::ServeDir::new(dir).append_index_html_on_directories(true);
    router.fallback_service(Router::new().fallback_service(files).layer(middleware::from_fn(
        move |req: Request, next: Next| {
            let policy = Arc::clone(&policy);
            async move {
                let hashed = is_hashed(req.uri().path());
                let mut response: Response = next.run(req).await;
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_SECURITY_POLICY, policy.current());
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
    fn the_policy_follows_a_rebuilt_page() {
        let dir = std::env::temp_dir().join(format!("soundline-web-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let policy = Policy::new(&dir);
        for script in ["init('/app-0000000000000001_bg.wasm');", "init('/app-0000000000000002_bg.wasm');"] {
            std::fs::write(dir.join("index.html"), format!("<script type=\"module\">{script}</script>"))
                .expect("write index.html");
            // Modification times are compared, not contents: make sure the rewrite has a new one.
            let later = SystemTime::now() + std::time::Duration::from_secs(u64::from(script.ends_with("2_bg.wasm');")));
            std::fs::File::options()
                .write(true)
                .open(dir.join("index.html"))
                .and_then(|f| f.set_modified(later))
                .expect("set mtime");
            let hash = BASE64.encode(Sha256::digest(script.as_bytes()));
            let csp = policy.current();
            assert!(csp.to_str().expect("ascii").contains(&hash), "{csp:?} lacks {hash}");
        }
        let _ = std::fs::remove_dir_all(&dir);
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
