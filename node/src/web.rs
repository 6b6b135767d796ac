//! The bundled web client: static files compiled into the binary and served on the client port,
//! so a newcomer who starts a node can open a browser and chat. No build step: plain HTML, CSS
//! and JavaScript from `node/web/`.

/// The file behind a URL path, with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let asset = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", include_bytes!("../web/index.html").as_slice()),
        "/app/app.js" => ("text/javascript; charset=utf-8", include_bytes!("../web/app.js").as_slice()),
        "/app/style.css" => ("text/css; charset=utf-8", include_bytes!("../web/style.css").as_slice()),
        _ => return None,
    };
    Some(asset)
}

#[cfg(test)]
mod tests {
    #[test]
    fn index_and_assets_are_served() {
        assert!(super::asset("/").is_some_and(|(kind, body)| kind.starts_with("text/html") && !body.is_empty()));
        assert!(super::asset("/app/app.js").is_some());
        assert!(super::asset("/app/style.css").is_some_and(|(kind, _)| kind.starts_with("text/css")));
        assert!(super::asset("/../Cargo.toml").is_none());
    }

    /// Every `/app/…` file the page refers to is one the node serves, so a renamed file cannot
    /// leave the bundled client half-loaded.
    #[test]
    fn every_asset_the_page_names_is_served() {
        let (_, page) = super::asset("/").expect("index is served");
        let page = std::str::from_utf8(page).expect("index.html is UTF-8");
        let named: Vec<&str> = page.split('"').filter(|part| part.starts_with("/app/")).collect();
        assert!(named.len() >= 2, "index.html names its script and stylesheet: {named:?}");
        for path in named {
            assert!(super::asset(path).is_some(), "index.html names {path}, which is not served");
        }
    }
}
