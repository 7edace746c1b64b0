//! `GET /dashboard`: one self-contained page (HTML, CSS and JS in one file compiled into the
//! binary; no CDN, it works offline). It carries no data: it reads `/dashboard/events` (SSE,
//! through `fetch` so it can send the token as `Authorization`), asking for the token once on a
//! 401 and keeping it in `sessionStorage` only.

/// The page.
pub const HTML: &str = include_str!("page.html");

/// Inline script and style only, nothing from elsewhere; data from this origin only.
pub const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; frame-ancestors 'self'";
