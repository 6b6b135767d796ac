//! Which web pages may open a WebSocket to the node (`client.allowed_origins`).
//!
//! A browser sends the page's origin in `Origin` with every WebSocket upgrade, and the node
//! cannot otherwise tell its own web client from a script on any other site that a signed-in
//! user happens to open. By default only the page's own origin is allowed: an `Origin` whose
//! host and port are those of the request's `Host` (the node itself, or the proxy in front of
//! it). An upgrade with no `Origin` comes from a program, not a browser page, and is allowed:
//! such a client must present a token anyway, and cannot be made to by another site.

/// The configured policy.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    /// Extra origins (`scheme://host[:port]`, lower case), allowed besides the page's own.
    listed: Vec<String>,
    /// `*` was listed: every origin is allowed.
    any: bool,
}

impl AllowedOrigins {
    pub fn new(origins: &[String]) -> AllowedOrigins {
        AllowedOrigins {
            listed: origins.iter().map(|origin| normalise(origin)).collect(),
            any: origins.iter().any(|origin| origin == "*"),
        }
    }

    /// Whether an upgrade with this `Origin` and `Host` may go ahead.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.any {
            return true;
        }
        let origin = normalise(origin);
        if self.listed.contains(&origin) {
            return true;
        }
        match (origin.split_once("://"), host) {
            (Some((scheme, authority)), Some(host)) => {
                let host = host.trim().to_ascii_lowercase();
                without_default_port(scheme, authority) == without_default_port(scheme, &host)
            }
            _ => false,
        }
    }
}

/// Check one configured entry: `*`, or `http(s)://host[:port]` with nothing after it.
pub fn check(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err(format!(
            "`{origin}` is not an origin: expected scheme://host[:port], e.g. https://chat.example.com"
        ));
    };
    if !matches!(scheme, "http" | "https") || authority.is_empty() || authority.contains(['/', '?', '#', ' ']) {
        return Err(format!(
            "`{origin}` is not an origin: expected http:// or https:// and host[:port] with no path, e.g. https://chat.example.com"
        ));
    }
    Ok(())
}

fn normalise(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `host:80` for http and `host:443` for https are `host`.
fn without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_own_origin_and_programs_are_allowed_by_default() {
        let policy = AllowedOrigins::new(&[]);
        assert!(policy.allows(None, Some("127.0.0.1:7600")));
        assert!(policy.allows(Some("http://127.0.0.1:7600"), Some("127.0.0.1:7600")));
        assert!(policy.allows(Some("https://Chat.Example.com"), Some("chat.example.com:443")));
        assert!(policy.allows(Some("http://chat.example.com"), Some("chat.example.com")));
        assert!(!policy.allows(Some("http://evil.example"), Some("127.0.0.1:7600")));
        assert!(!policy.allows(Some("http://127.0.0.1:7601"), Some("127.0.0.1:7600")));
        assert!(!policy.allows(Some("null"), Some("127.0.0.1:7600")));
        assert!(!policy.allows(Some("http://127.0.0.1:7600"), None));
    }

    #[test]
    fn listed_origins_and_the_wildcard() {
        let policy = AllowedOrigins::new(&["https://chat.example.com/".into()]);
        assert!(policy.allows(Some("https://chat.example.com"), Some("10.0.0.5:7600")));
        assert!(!policy.allows(Some("http://chat.example.com"), Some("10.0.0.5:7600")));
        assert!(AllowedOrigins::new(&["*".into()]).allows(Some("http://anything"), Some("x")));
    }

    #[test]
    fn entries_are_checked() {
        assert!(check("https://chat.example.com").is_ok());
        assert!(check("http://127.0.0.1:7600").is_ok());
        assert!(check("*").is_ok());
        for bad in ["chat.example.com", "ftp://x", "https://x/path", "https://"] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
