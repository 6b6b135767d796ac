use std::io::Write;

use figment::providers::{Format, Serialized, Toml};

use super::*;

fn shipped() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.toml")
}

#[test]
fn shipped_cluster_toml_parses_and_equals_the_defaults() {
    let config = Config::from_figment(Config::figment(Some(&shipped()))).unwrap();
    assert_eq!(config, Config::default(), "cluster.toml documents the defaults; keep them in step");
}

#[test]
fn explicit_layers_override_the_file() {
    let figment = Config::figment(Some(&shipped()))
        .merge(Serialized::default("limits.max_frame_bytes", 131_072))
        .merge(Serialized::default("node.name", "palaver-7"));
    let config = Config::from_figment(figment).unwrap();
    assert_eq!(config.limits.max_frame_bytes, 131_072);
    assert_eq!(config.node.name, "palaver-7");
}

#[test]
fn unknown_keys_are_named() {
    let figment = Config::figment(None).merge(Toml::string("[limits]\nmax_frame_byte = 1\n"));
    let err = Config::from_figment(figment).unwrap_err().to_string();
    assert!(err.contains("max_frame_byte"), "{err}");
}

#[test]
fn wrong_types_are_named() {
    let figment = Config::figment(None).merge(Toml::string("[limits]\nmax_frame_bytes = \"big\"\n"));
    let err = Config::from_figment(figment).unwrap_err().to_string();
    assert!(err.contains("max_frame_bytes"), "{err}");
}

#[test]
fn invalid_values_are_named() {
    let cases = [
        ("[limits]\nreplay_page_len = 0\n", "limits.replay_page_len"),
        ("[store]\nbackend = \"postgres\"\n", "store.backend"),
        ("[node]\nname = \"Bad Name\"\n", "node.name"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        ("[limits]\nmax_body_bytes = 65536\n", "limits.max_body_bytes"),
        ("[client]\nweb_nodes = [\"ws://user:pw@elsewhere.example:7600\"]\n", "client.web_nodes"),
        ("[tracing]\notlp_endpoint = \"collector:4318\"\n", "tracing.otlp_endpoint"),
        ("[tracing]\nsample_percent = 101\n", "tracing.sample_percent"),
        ("[webhooks]\nbatch_max = 0\n", "webhooks.batch_max"),
        ("[webhooks]\nlease_ms = 100\n", "webhooks.lease_ms"),
        ("[push]\nlease_ms = 100\n", "push.lease_ms"),
        ("[push.webhook]\nurl_prefixes = [\"https://gw.internal\"]\n", "push.webhook.url_prefixes"),
        ("[push.webpush]\nsubject = \"admin\"\n", "push.webpush.subject"),
        ("[limits]\nreaction_flush_ms = 0\n", "limits.reaction_flush_ms"),
    ];
    for (toml, key) in cases {
        let err = Config::from_figment(Config::figment(None).merge(Toml::string(toml))).unwrap_err();
        match err {
            ConfigError::Invalid { key: named, .. } => assert_eq!(named, key, "{toml}"),
            other => panic!("{toml}: expected an invalid-value error, got {other}"),
        }
    }
}

#[test]
fn a_token_key_in_the_file_is_refused() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[auth]\ntoken_key = \"0123456789abcdef0123456789abcdef\"").unwrap();
    let err = Config::load(Some(file.path())).unwrap_err().to_string();
    assert!(err.starts_with("auth.token_key: is a secret"), "{err}");
}

#[test]
fn a_missing_file_is_named() {
    let err = Config::load(Some(std::path::Path::new("/nonexistent/palaver.toml"))).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/palaver.toml"), "{err}");
}

#[test]
fn an_admin_token_in_the_file_is_refused() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[admin]\ntoken = \"0123456789abcdef0123\"").unwrap();
    let err = Config::load(Some(file.path())).unwrap_err().to_string();
    assert!(err.starts_with("admin.token: is a secret"), "{err}");
    assert!(err.contains("PALAVER_ADMIN__TOKEN"), "{err}");
}

#[test]
fn a_push_gateway_secret_in_the_file_is_refused() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[push.webhook]\nsecret = \"gateway-key\"\nurl_prefixes = [\"https://gw.internal/\"]").unwrap();
    let err = Config::load(Some(file.path())).unwrap_err().to_string();
    assert!(err.starts_with("push.webhook.secret: is a secret"), "{err}");
}

#[test]
fn client_and_admin_settings_are_checked() {
    let cases = [
        ("[admin]\nlisten = \"0.0.0.0:7601\"\n", "admin.token"),
        ("[client]\nallowed_origins = [\"chat.example.com\"]\n", "client.allowed_origins"),
        ("[client]\ntls_cert_file = \"cert.pem\"\n", "client.tls_key_file"),
        ("[client]\ntls_key_file = \"key.pem\"\n", "client.tls_cert_file"),
        ("[client]\ntls_cert_file = \"/nonexistent/cert.pem\"\ntls_key_file = \"key.pem\"\n", "client.tls_cert_file"),
        ("[limits]\nmax_connections_per_address = 0\n", "limits.max_connections_per_address"),
    ];
    for (toml, key) in cases {
        match Config::from_figment(Config::figment(None).merge(Toml::string(toml))).unwrap_err() {
            ConfigError::Invalid { key: named, .. } => assert_eq!(named, key, "{toml}"),
            other => panic!("{toml}: {other}"),
        }
    }
    let figment = Config::figment(None).merge(Toml::string(
        "[admin]\nlisten = \"0.0.0.0:7601\"\ntoken_file = \"/run/secrets/admin\"\n[client]\nallowed_origins = [\"https://chat.example.com\", \"*\"]\n",
    ));
    Config::from_figment(figment).unwrap();
}

#[test]
fn an_identity_provider_needs_an_audience_and_a_key_and_keeps_its_secret_out_of_files() {
    let mut config = Config::default();
    config.auth.jwt.issuer = "https://login.example.com".into();
    assert!(config.validate().unwrap_err().to_string().starts_with("auth.jwt.audience"));
    config.auth.jwt.audience = "chat".into();
    assert!(config.validate().unwrap_err().to_string().starts_with("auth.jwt.jwks_url"));
    config.auth.jwt.jwks_url = Some("ftp://login.example.com/keys".into());
    assert!(config.validate().unwrap_err().to_string().starts_with("auth.jwt.jwks_url"));
    config.auth.jwt.jwks_url = Some("https://login.example.com/.well-known/jwks.json".into());
    config.validate().unwrap();
    config.auth.jwt.hs256_secret = Some("short".into());
    assert!(config.validate().unwrap_err().to_string().starts_with("auth.jwt.hs256_secret"));

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[auth.jwt]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"").unwrap();
    let err = Config::load(Some(file.path())).unwrap_err().to_string();
    assert!(err.starts_with("auth.jwt.hs256_secret: is a secret"), "{err}");
}
