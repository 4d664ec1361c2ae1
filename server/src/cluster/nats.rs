//! How a node connects to NATS: server URLs, credentials and TLS.
//!
//! async-nats reads no credentials from a URL, so `nats://user:pass@host` and
//! `nats://token@host` are taken apart here: the credentials go to the connect
//! options, the URL without them to the client (and to the logs). Secrets are never
//! logged.

use async_nats::{ConnectOptions, ServerAddr};
use url::Url;

use crate::config::{NatsConfig, redact_one};

/// Credentials found in the URLs or the flags.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Login {
    UserPassword(String, String),
    Token(String),
}

/// The servers to connect to, without credentials, and the options to log in with.
pub(crate) struct Resolved {
    /// Every server, credentials removed.
    pub(crate) servers: Vec<ServerAddr>,
    /// The servers as they may be logged.
    pub(crate) shown: String,
    /// How the node logs in, for the logs (`user ruser`, `token`, `creds FILE`, …).
    pub(crate) login: String,
    login_options: Option<Login>,
    tls_required: bool,
}

/// `url` with a scheme (`host:port` alone means `nats://host:port`).
fn parse(url: &str) -> Result<Url, String> {
    let url = url.trim();
    let full = if url.contains("://") {
        url.to_owned()
    } else {
        format!("nats://{url}")
    };
    let parsed = Url::parse(&full).map_err(|e| format!("{}: {e}", redact_one(url)))?;
    match parsed.scheme() {
        "nats" | "tls" => {}
        other => {
            return Err(format!(
                "{}: the scheme must be nats:// or tls://, not {other}://",
                redact_one(url)
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{}: no host", redact_one(url)));
    }
    Ok(parsed)
}

/// Percent-decodes a URL's user or password.
fn decode(part: &str) -> String {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Takes `config` apart: the servers without credentials and how to log in. Every
/// URL must carry the same credentials (or none), and credentials in a URL must not
/// contradict the flags.
pub(crate) fn resolve(config: &NatsConfig) -> Result<Resolved, String> {
    if config.servers.is_empty() {
        return Err("--nats: no NATS server given".into());
    }
    let mut servers = Vec::with_capacity(config.servers.len());
    let mut shown = Vec::with_capacity(config.servers.len());
    let mut from_urls: Option<Login> = None;
    let mut tls_required = false;
    for given in &config.servers {
        let mut url = parse(given)?;
        let user = decode(url.username());
        let login = match (user.is_empty(), url.password()) {
            (true, None) => None,
            (_, Some(password)) => Some(Login::UserPassword(user, decode(password))),
            (false, None) => Some(Login::Token(user)),
        };
        if let Some(login) = login {
            match &from_urls {
                Some(seen) if *seen != login => {
                    return Err(
                        "--nats: the server URLs carry different credentials; give one set \
                         (in every URL, or with --nats-user/--nats-password or --nats-token)"
                            .into(),
                    );
                }
                _ => from_urls = Some(login),
            }
            // Both setters only fail for URLs that cannot have credentials.
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        tls_required |= url.scheme() == "tls";
        shown.push(url.to_string());
        servers.push(
            url.as_str()
                .parse::<ServerAddr>()
                .map_err(|e| format!("--nats {}: {e}", redact_one(given)))?,
        );
    }
    let from_flags = match (&config.user, &config.password, &config.token) {
        (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {
            return Err("--nats-token cannot be combined with --nats-user/--nats-password".into());
        }
        (Some(user), Some(password), None) => {
            Some(Login::UserPassword(user.clone(), password.clone()))
        }
        (Some(_), None, None) => return Err("--nats-user needs --nats-password".into()),
        (None, Some(_), None) => return Err("--nats-password needs --nats-user".into()),
        (None, None, Some(token)) => Some(Login::Token(token.clone())),
        (None, None, None) => None,
    };
    let login_options = match (from_urls, from_flags) {
        (Some(a), Some(b)) if a != b => {
            return Err(
                "the credentials in --nats differ from --nats-user/--nats-password/--nats-token; \
                 give them once"
                    .into(),
            );
        }
        (a, b) => a.or(b),
    };
    if login_options.is_some() && config.creds.is_some() {
        return Err(
            "--nats-creds cannot be combined with a user, password or token: the credentials \
             file is the login"
                .into(),
        );
    }
    if config.tls_cert.is_some() != config.tls_key.is_some() {
        return Err("--nats-tls-cert and --nats-tls-key go together".into());
    }
    let login = match (&login_options, &config.creds) {
        (Some(Login::UserPassword(user, _)), _) => format!("user {user}"),
        (Some(Login::Token(_)), _) => "token".into(),
        (None, Some(creds)) => format!("credentials file {}", creds.display()),
        (None, None) => "anonymous".into(),
    };
    Ok(Resolved {
        servers,
        shown: shown.join(","),
        login,
        login_options,
        tls_required: tls_required || config.tls_ca.is_some() || config.tls_cert.is_some(),
    })
}

impl Resolved {
    /// `options` with the credentials and TLS settings of `config` applied.
    pub(crate) async fn apply(
        &self,
        config: &NatsConfig,
        mut options: ConnectOptions,
    ) -> Result<ConnectOptions, String> {
        match &self.login_options {
            Some(Login::UserPassword(user, password)) => {
                options = options.user_and_password(user.clone(), password.clone());
            }
            Some(Login::Token(token)) => options = options.token(token.clone()),
            None => {}
        }
        if let Some(creds) = &config.creds {
            options = options.credentials_file(creds).await.map_err(|e| {
                format!(
                    "--nats-creds {}: cannot use the credentials file: {e}",
                    creds.display()
                )
            })?;
        }
        if let Some(ca) = &config.tls_ca {
            check_readable(ca, "--nats-tls-ca")?;
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            check_readable(cert, "--nats-tls-cert")?;
            check_readable(key, "--nats-tls-key")?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        Ok(options)
    }
}

/// async-nats reads TLS files only when it connects, and retries forever: a wrong
/// path must fail the start instead.
fn check_readable(path: &std::path::Path, flag: &str) -> Result<(), String> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| format!("{flag} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::redacted;

    fn config(servers: &[&str]) -> NatsConfig {
        NatsConfig {
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            ..NatsConfig::default()
        }
    }

    #[test]
    fn credentials_leave_the_urls() {
        let resolved = resolve(&config(&[
            "nats://ruser:S3cret%40PW@127.0.0.1:4222",
            "nats://ruser:S3cret%40PW@127.0.0.2:4222",
        ]))
        .unwrap();
        assert_eq!(
            resolved.login_options,
            Some(Login::UserPassword("ruser".into(), "S3cret@PW".into()))
        );
        assert!(!resolved.shown.contains("S3cret"), "{}", resolved.shown);
        assert_eq!(resolved.servers.len(), 2);
        assert_eq!(resolved.login, "user ruser");
        for server in &resolved.servers {
            assert!(server.username().is_none() && server.password().is_none());
        }
        let token = resolve(&config(&["tls://t0ken@nats.example:4443"])).unwrap();
        assert_eq!(token.login_options, Some(Login::Token("t0ken".into())));
        assert!(token.tls_required);
        assert!(!token.shown.contains("t0ken"));
        let bare = resolve(&config(&["127.0.0.1:4222"])).unwrap();
        assert_eq!(bare.shown, "nats://127.0.0.1:4222");
        assert_eq!(bare.login, "anonymous");
    }

    #[test]
    fn contradictions_are_refused_without_showing_secrets() {
        for (servers, flags) in [
            (
                &["nats://a:b@h:1", "nats://a:c@h:2"][..],
                NatsConfig::default(),
            ),
            (
                &["nats://a:b@h:1"][..],
                NatsConfig {
                    token: Some("t".into()),
                    ..NatsConfig::default()
                },
            ),
            (
                &["nats://h:1"][..],
                NatsConfig {
                    user: Some("u".into()),
                    ..NatsConfig::default()
                },
            ),
            (
                &["nats://a:b@h:1"][..],
                NatsConfig {
                    creds: Some("x.creds".into()),
                    ..NatsConfig::default()
                },
            ),
            (&["http://h:1"][..], NatsConfig::default()),
            (&["nats://u:pw@"][..], NatsConfig::default()),
        ] {
            let error = resolve(&NatsConfig {
                servers: servers.iter().map(|s| (*s).to_owned()).collect(),
                ..flags
            })
            .err()
            .expect("refused");
            assert!(!error.contains(":b@") && !error.contains(":pw@"), "{error}");
        }
        assert_eq!(
            redacted(&["nats://u:p@h:1".into(), "h:2".into()]),
            ["nats://***@h:1", "h:2"]
        );
    }

    #[test]
    fn flags_and_urls_may_agree() {
        let resolved = resolve(&NatsConfig {
            user: Some("u".into()),
            password: Some("p".into()),
            ..config(&["nats://u:p@h:1", "nats://h:2"])
        })
        .unwrap();
        assert_eq!(
            resolved.login_options,
            Some(Login::UserPassword("u".into(), "p".into()))
        );
    }
}
