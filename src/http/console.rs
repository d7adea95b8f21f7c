//! The Audit logs page in the browser: `/` (organization chooser) and
//! `/orgs/{org}/audit`, one static page whose script reads the `/v1` API with the
//! bearer token the user pasted.
//!
//! Every asset is compiled into the binary (no CDN, works offline). The page holds no
//! audit data and no secret: the script fetches events with `Authorization: Bearer`
//! from `sessionStorage` (no cookies, so no CSRF) and renders every value as text. The
//! headers shut what the page does not need: a CSP without inline script or `eval`,
//! no framing, no referrer, no MIME sniffing. `http.console_enabled = false` turns
//! every route here into the ordinary `404`.

use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::db::admin::OrgSlug;
use crate::http::response::{self, Body};

/// The page (the same document for the chooser and the organization's view).
const PAGE: &str = include_str!("console/index.html");
/// Its script.
const SCRIPT: &str = include_str!("console/console.js");
/// Its style sheet.
const STYLE: &str = include_str!("console/console.css");
/// Its icon (also spares the browser's `/favicon.ico` a `404`).
const ICON: &str = include_str!("console/icon.svg");

/// Sent with every console response. `connect-src 'self'` is what the script needs
/// for `/v1`; downloads are `blob:` links, which are navigations, not fetches.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// The page itself is never cached (a new binary may change the script it names);
    /// assets are revalidated.
    cache_control: &'static str,
}

/// The asset served at `path`, if the path belongs to the console.
fn asset(path: &str) -> Option<Asset> {
    let page = Asset {
        body: PAGE,
        content_type: "text/html; charset=utf-8",
        cache_control: "no-store",
    };
    let file = |body, content_type| Asset {
        body,
        content_type,
        cache_control: "no-cache",
    };
    match path {
        "/" => Some(page),
        "/assets/console.js" => Some(file(SCRIPT, "text/javascript; charset=utf-8")),
        "/assets/console.css" => Some(file(STYLE, "text/css; charset=utf-8")),
        "/favicon.ico" | "/assets/icon.svg" => Some(file(ICON, "image/svg+xml")),
        _ => {
            let slug = path.strip_prefix("/orgs/")?.strip_suffix("/audit")?;
            slug.parse::<OrgSlug>().ok().map(|_| page)
        }
    }
}

/// Whether `path` is one of the console's routes.
pub fn is_console_path(path: &str) -> bool {
    asset(path).is_some()
}

/// Answers a request for one of the console's routes (`404` for any other path).
pub fn handle<B>(request: &Request<B>) -> Response<Body> {
    let Some(asset) = asset(request.uri().path()) else {
        return response::error(StatusCode::NOT_FOUND, "not_found", "no such route");
    };
    let mut response = if request.method() == Method::GET || request.method() == Method::HEAD {
        // hyper leaves the body out of a HEAD answer and keeps its length.
        let mut response = Response::new(response::full(asset.body));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(asset.cache_control),
        );
        response
    } else {
        response::method_not_allowed("GET, HEAD")
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_routes_are_exactly_the_page_and_its_assets() {
        for path in [
            "/",
            "/orgs/acme-dev/audit",
            "/orgs/a/audit",
            "/assets/console.js",
            "/assets/console.css",
            "/assets/icon.svg",
            "/favicon.ico",
        ] {
            assert!(is_console_path(path), "{path}");
        }
        for path in [
            "/orgs/Acme/audit",
            "/orgs//audit",
            "/orgs/acme-dev/audit/",
            "/orgs/acme-dev",
            "/orgs/acme dev/audit",
            "/orgs/acme-dev/x/audit",
            "/assets/",
            "/assets/other.js",
            "/index.html",
            "/v1/orgs",
        ] {
            assert!(!is_console_path(path), "{path}");
        }
    }

    #[test]
    fn the_page_loads_no_inline_script_and_nothing_from_elsewhere() {
        // The CSP would block them; this catches the mistake before a browser does.
        assert!(!PAGE.contains("<script>"));
        let inline_handler = PAGE.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!inline_handler, "no inline event handler attributes");
        assert!(!PAGE.contains("style="));
        for text in [PAGE, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("eval("));
    }
}
