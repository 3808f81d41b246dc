//! The chat page at `/`: static assets compiled into the binary, so a node serves it with no
//! files beside it and no build step (the page is plain ES modules, `edge/web/`). The client
//! library it imports is the npm package's own source (`tools/js-client/src/index.js`),
//! served as `/switchboard-client.js`, so the page runs exactly what applications import.

/// One embedded file.
pub struct Asset {
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! web {
    ($file:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $file))
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// The asset served at `path`, if any.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, bytes): (&'static str, &'static [u8]) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", web!("index.html")),
        "/app.js" => (JS, web!("app.js")),
        "/app.css" => ("text/css; charset=utf-8", web!("app.css")),
        "/switchboard-client.js" => {
            (JS, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/js-client/src/index.js")))
        }
        _ => return None,
    };
    Some(Asset { content_type, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page loads is embedded, and the page loads them by those names.
    #[test]
    fn the_page_and_everything_it_imports_are_embedded() {
        let page = std::str::from_utf8(asset("/").unwrap().bytes).unwrap();
        assert!(page.contains("src=\"/app.js\"") && page.contains("href=\"/app.css\""));
        let app = std::str::from_utf8(asset("/app.js").unwrap().bytes).unwrap();
        assert!(app.contains("from '/switchboard-client.js'"));
        let client = asset("/switchboard-client.js").unwrap();
        assert!(std::str::from_utf8(client.bytes).unwrap().contains("export class Switchboard"));
        assert!(client.content_type.starts_with("text/javascript"));
        assert!(asset("/../Cargo.toml").is_none() && asset("/app.js/").is_none());
    }
}
