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
        assert!(super::asset("/../Cargo.toml").is_none());
    }
}
