//! Command-line options: `--key value` pairs and bare `--flag`s after the scenario name.
//! Hand-rolled to keep the binary's dependencies to what the test crate already has.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context};

use super::peers::{Kind, Target};

#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<String, Vec<String>>,
    flags: Vec<String>,
}

impl Args {
    /// Parse `--key value` and `--flag` (a key followed by another `--key` or by nothing).
    pub fn parse(raw: &[String]) -> anyhow::Result<Args> {
        let mut args = Args::default();
        let mut i = 0;
        while i < raw.len() {
            let Some(key) = raw[i].strip_prefix("--") else {
                bail!("unexpected argument `{}` (options are --key value)", raw[i])
            };
            if let Some((key, value)) = key.split_once('=') {
                args.values.entry(key.to_string()).or_default().push(value.to_string());
                i += 1;
            } else if i + 1 < raw.len() && !raw[i + 1].starts_with("--") {
                args.values.entry(key.to_string()).or_default().push(raw[i + 1].clone());
                i += 2;
            } else {
                args.flags.push(key.to_string());
                i += 1;
            }
        }
        Ok(args)
    }

    pub fn flag(&self, key: &str) -> bool {
        self.flags.iter().any(|f| f == key)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(|v| v.last()).map(String::as_str)
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.values.get(key).cloned().unwrap_or_default()
    }

    pub fn get<T: FromStr>(&self, key: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.str(key) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|err| anyhow!("--{key} {value}: {err}")),
        }
    }

    /// The servers to measure, in the order palaver, palaver-fdb, nats, socketio, xmpp:
    /// `--palaver URL[,URL…] [--palaver-pid PID[,PID…]] [--palaver-admin HOST:PORT[,…]]`,
    /// `--palaver-fdb …` alike for a palaver on FoundationDB, `--nats URL --nats-pid PID`, …
    /// `--only NAME[,NAME]` keeps some of them.
    pub fn targets(&self) -> anyhow::Result<Vec<Target>> {
        let only: Vec<String> =
            self.str("only").map(|s| s.split(',').map(str::to_string).collect()).unwrap_or_default();
        let mut targets = Vec::new();
        let servers = [
            ("palaver", Kind::Palaver, None),
            ("palaver-fdb", Kind::Palaver, Some("FoundationDB")),
            ("nats", Kind::Nats, None),
            ("socketio", Kind::Socketio, None),
            ("xmpp", Kind::Xmpp, None),
        ];
        for (name, kind, store) in servers {
            let Some(urls) = self.str(name) else { continue };
            if !only.is_empty() && !only.iter().any(|o| o == name) {
                continue;
            }
            let urls: Vec<String> = urls.split(',').filter(|u| !u.is_empty()).map(str::to_string).collect();
            for url in &urls {
                check_loopback(url).with_context(|| format!("--{name}"))?;
            }
            let pids = match self.str(&format!("{name}-pid")) {
                Some(pids) => pids.split(',').map(|p| p.trim().parse::<u32>()).collect::<Result<Vec<_>, _>>()?,
                None => Vec::new(),
            };
            let admin: Vec<String> = match self.str(&format!("{name}-admin")) {
                Some(admin) => admin.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect(),
                None => Vec::new(),
            };
            for addr in &admin {
                check_loopback(&format!("http://{addr}")).with_context(|| format!("--{name}-admin"))?;
            }
            targets.push(Target {
                kind,
                admin,
                urls,
                pids,
                encoding: self.str("encoding").unwrap_or("json").to_string(),
                xmpp_domain: self.str("xmpp-domain").unwrap_or("localhost").to_string(),
                batch: !self.flag("no-batch"),
                store: store.map(str::to_string),
            });
        }
        if targets.is_empty() {
            bail!("no server given: pass --palaver ws://127.0.0.1:PORT/ws (and --nats, --socketio, --xmpp for peers)");
        }
        Ok(targets)
    }
}

/// Load is only ever sent to this machine.
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url.split("://").nth(1).ok_or_else(|| anyhow!("`{url}` is not a ws:// URL"))?;
    let host_port = rest.split('/').next().unwrap_or("");
    let host = match host_port.rsplit_once(':') {
        Some((host, _)) => host,
        None => host_port,
    };
    let ok = host == "localhost" || host.starts_with("127.") || host == "[::1]";
    if !ok {
        bail!("`{url}`: the load generator only targets 127.0.0.0/8, [::1] or localhost");
    }
    Ok(())
}
