//! The bundled web client: static files compiled into the binary and served on the client port,
//! so a newcomer who starts a node can open a browser and chat. No build step: plain HTML, CSS
//! and JavaScript from `node/web/`.
//!
//! The page learns here which nodes it may connect to (its own, plus `client.web_nodes`): the
//! list goes into `index.html` and into the Content-Security-Policy header of every file served,
//! so a page never sends its token or a password to a host the operator did not name, even if
//! its URL or storage asks it to.
//!
//! It learns its node's VAPID public key too (the `palaver-vapid-key` meta tag, empty when Web
//! Push is not configured), to subscribe the browser to push notifications with, and the service
//! worker that shows them (`/sw.js`) is served at the root so that its scope is the whole page.

/// The page's placeholder for the configured node list (see `node/web/app.js`, "Node list").
const NODES_PLACEHOLDER: &str = r#"<meta name="palaver-nodes" content="">"#;

/// The page's placeholder for the VAPID public key (see `node/web/app.js`, "Push notifications").
const VAPID_PLACEHOLDER: &str = r#"<meta name="palaver-vapid-key" content="">"#;

/// Longest entry of `client.web_nodes`.
const NODE_MAX_CHARS: usize = 256;

/// The web client as this node serves it: the page with its node list, and the headers.
#[derive(Debug, Clone)]
pub struct WebClient {
    index: Vec<u8>,
    headers: String,
}

impl WebClient {
    /// The client for a node configured with `nodes` (`client.web_nodes`, each checked by
    /// [`check_node`]) and, when Web Push is configured, the VAPID public key browsers subscribe
    /// with (base64url, as `actors::push::providers::webpush::public_key_of` gives it).
    pub fn new(nodes: &[String], vapid_public_key: Option<&str>) -> WebClient {
        let page = std::str::from_utf8(include_bytes!("../web/index.html")).expect("index.html is UTF-8");
        debug_assert!(page.contains(NODES_PLACEHOLDER), "index.html lost its node list placeholder");
        debug_assert!(page.contains(VAPID_PLACEHOLDER), "index.html lost its VAPID key placeholder");
        // Checked entries hold no quote, `&`, `<` or `,`: they go into the attribute as they are.
        let list = format!(r#"<meta name="palaver-nodes" content="{}">"#, nodes.join(","));
        // A key is base64url; anything else stays out of the page (the page then offers no push).
        let key = vapid_public_key.filter(|key| is_base64url(key)).unwrap_or("");
        let vapid = format!(r#"<meta name="palaver-vapid-key" content="{key}">"#);
        let index = page.replacen(NODES_PLACEHOLDER, &list, 1).replacen(VAPID_PLACEHOLDER, &vapid, 1).into_bytes();
        let sources: Vec<String> = nodes.iter().flat_map(|node| csp_sources(node)).collect();
        // No inline script or style even if text ever reached the DOM as markup; WebSockets only
        // to the page's own node ('self' covers ws: and wss: there) and the configured ones.
        let policy = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'{}; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            sources.iter().map(|source| format!(" {source}")).collect::<String>()
        );
        let headers = format!("Content-Security-Policy: {policy}\r\nReferrer-Policy: no-referrer\r\n");
        WebClient { index, headers }
    }

    /// The file behind a URL path, with its content type.
    pub fn asset(&self, path: &str) -> Option<(&'static str, &[u8])> {
        let asset = match path {
            "/" | "/index.html" => ("text/html; charset=utf-8", self.index.as_slice()),
            "/app/app.js" => ("text/javascript; charset=utf-8", include_bytes!("../web/app.js").as_slice()),
            "/app/style.css" => ("text/css; charset=utf-8", include_bytes!("../web/style.css").as_slice()),
            // At the root: a service worker controls only the paths under its own.
            "/sw.js" => ("text/javascript; charset=utf-8", include_bytes!("../web/sw.js").as_slice()),
            _ => return None,
        };
        Some(asset)
    }

    /// Header lines (each ending in CRLF) to send with every file of the client.
    pub fn headers(&self) -> &str {
        &self.headers
    }
}

/// Whether `text` is non-empty base64url without padding (`A-Z a-z 0-9 - _`), so it can go
/// into an HTML attribute as it is.
fn is_base64url(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Check one `client.web_nodes` entry: `host:port`, `ws://host:port/path` or `wss://…`, with
/// nothing that could change the meaning of the page or the policy it goes into.
pub fn check_node(spec: &str) -> Result<(), String> {
    if spec.len() > NODE_MAX_CHARS {
        return Err(format!("longer than {NODE_MAX_CHARS} characters"));
    }
    let rest = spec.strip_prefix("ws://").or_else(|| spec.strip_prefix("wss://")).unwrap_or(spec);
    if rest.contains("://") {
        return Err("expected host:port, ws://host:port/path or wss://host:port/path".into());
    }
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(authority, path)| (authority, path));
    if authority.is_empty() {
        return Err("no host".into());
    }
    if authority.contains('@') {
        return Err("no user name or password in a node address".into());
    }
    let host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if !authority.chars().all(host_char) {
        return Err("the host may hold only letters, digits, `.`, `-`, `:` and `[]`".into());
    }
    let path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_' | '~');
    if !path.chars().all(path_char) {
        return Err("the path may hold only letters, digits and `/ . - _ ~`".into());
    }
    Ok(())
}

/// The CSP sources that let the page open a WebSocket to a configured node: the scheme it
/// names, or both when it names none (the page's scheme decides).
fn csp_sources(spec: &str) -> Vec<String> {
    let authority = |rest: &str| rest.split('/').next().unwrap_or(rest).to_string();
    if let Some(rest) = spec.strip_prefix("ws://") {
        vec![format!("ws://{}", authority(rest))]
    } else if let Some(rest) = spec.strip_prefix("wss://") {
        vec![format!("wss://{}", authority(rest))]
    } else {
        let host = authority(spec);
        vec![format!("ws://{host}"), format!("wss://{host}")]
    }
}

#[cfg(test)]
mod tests {
    use super::WebClient;

    fn plain() -> WebClient {
        WebClient::new(&[], None)
    }

    fn page_of(web: &WebClient) -> String {
        String::from_utf8(web.asset("/").expect("index is served").1.to_vec()).expect("index.html is UTF-8")
    }

    #[test]
    fn index_and_assets_are_served() {
        let web = plain();
        assert!(web.asset("/").is_some_and(|(kind, body)| kind.starts_with("text/html") && !body.is_empty()));
        assert!(web.asset("/app/app.js").is_some());
        assert!(web.asset("/app/style.css").is_some_and(|(kind, _)| kind.starts_with("text/css")));
        // The service worker, at the root so that its scope is the whole page.
        assert!(web
            .asset("/sw.js")
            .is_some_and(|(kind, body)| kind.starts_with("text/javascript") && !body.is_empty()));
        assert!(web.asset("/../Cargo.toml").is_none());
    }

    /// Every `/app/…` file the page refers to, and every root file its script names in quotes
    /// (the service worker), is one the node serves, so a renamed file cannot leave the bundled
    /// client half-loaded.
    #[test]
    fn every_asset_the_page_names_is_served() {
        let web = plain();
        let page = page_of(&web);
        let named: Vec<&str> = page.split('"').filter(|part| part.starts_with("/app/")).collect();
        assert!(named.len() >= 2, "index.html names its script and stylesheet: {named:?}");
        for path in named {
            assert!(web.asset(path).is_some(), "index.html names {path}, which is not served");
        }
        let script = std::str::from_utf8(web.asset("/app/app.js").unwrap().1).unwrap();
        let scripts: Vec<&str> =
            script.split(['\'', '"']).filter(|part| part.starts_with('/') && part.ends_with(".js")).collect();
        assert!(scripts.contains(&"/sw.js"), "app.js registers its service worker: {scripts:?}");
        for path in scripts {
            assert!(web.asset(path).is_some(), "app.js names {path}, which is not served");
        }
    }

    /// The VAPID public key reaches the page's meta tag; without one, or with one that is not
    /// base64url (it could not go into the attribute as it is), the tag stays empty.
    #[test]
    fn the_vapid_key_reaches_the_page_when_it_is_base64url() {
        let key = "BEl62iUYgUivxIkv69yViEuiBIa-Ib9-SkvMeAtA3LFgDzkrxZJjSgSnfckjBJuBkr3qBUYIHBQFLXYp5Nksh8U";
        let page = page_of(&WebClient::new(&[], Some(key)));
        assert!(page.contains(&format!(r#"<meta name="palaver-vapid-key" content="{key}">"#)), "{page}");
        let empty = r#"<meta name="palaver-vapid-key" content="">"#;
        assert!(page_of(&plain()).contains(empty));
        for bad in ["", "abc\"><script>alert(1)</script>", "BEl6 2iU", "BEl62+iU/Yg=", "clé"] {
            let page = page_of(&WebClient::new(&[], Some(bad)));
            assert!(page.contains(empty), "{bad:?} reached the page");
            assert!(!page.contains("<script>alert"), "{bad:?} reached the page");
        }
    }

    #[test]
    fn configured_nodes_reach_the_page_and_the_policy() {
        let web = WebClient::new(&["10.0.0.2:7600".into(), "wss://chat.example.org/ws".into()], None);
        let (_, page) = web.asset("/").unwrap();
        let page = std::str::from_utf8(page).unwrap();
        assert!(page.contains(r#"<meta name="palaver-nodes" content="10.0.0.2:7600,wss://chat.example.org/ws">"#));
        let csp = web.headers().lines().find(|line| line.starts_with("Content-Security-Policy:")).unwrap();
        assert!(
            csp.contains("connect-src 'self' ws://10.0.0.2:7600 wss://10.0.0.2:7600 wss://chat.example.org;"),
            "{csp}"
        );
        // Without configured nodes the page may connect to its own node only.
        let csp = plain().headers().to_string();
        assert!(csp.contains("connect-src 'self';"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }

    #[test]
    fn node_entries_that_could_break_out_are_refused() {
        for good in ["10.0.0.2:7600", "chat.example.org", "ws://[::1]:7600/ws", "wss://chat.example.org/palaver/ws"] {
            assert_eq!(super::check_node(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "http://chat.example.org",
            "ws://user:pw@chat.example.org",
            "a.example.org,b.example.org",
            "chat.example.org\"><script>",
            "chat.example.org; script-src *",
            "ws://chat.example.org/ws?x=1",
            "ws:///ws",
        ] {
            assert!(super::check_node(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(super::check_node(&"a".repeat(300)).is_err());
    }
}
