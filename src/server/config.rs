//! The `server:` section of `cauce.yaml`: where to listen, the link base for alerts, the API
//! tokens and their roles, and the shutdown grace period. Token values are usually `${VAR}`
//! and are expanded (and registered as secrets) when the server starts.

use crate::spec::{decode, Location, SpecError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// What a token may do. Each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything (pipelines, runs, logs, reports, schedules).
    Viewer,
    /// Also trigger, cancel and retry runs.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// The name written in `cauce.yaml` and shown to callers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// One API token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs (`ci`, `grafana`); never the token itself.
    pub name: String,
    /// The token (write `${VAR}`; at least 16 characters once expanded).
    pub token: String,
    /// Its role.
    pub role: Role,
}

/// `server:` settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address to listen on (`127.0.0.1:8080` by default: loopback only).
    pub listen: String,
    /// The address users reach the server at, for links in alerts.
    pub base_url: Option<String>,
    /// API tokens.
    pub tokens: Vec<TokenConfig>,
    /// The role of a request without a token (`None`: such requests are refused).
    pub anonymous: Option<Role>,
    /// On SIGTERM, how long running tasks may go on before they are cancelled.
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            base_url: None,
            tokens: vec![],
            anonymous: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    base_url: Option<String>,
    tokens: Option<Vec<TokenConfig>>,
    anonymous: Option<Role>,
    shutdown_grace: Option<String>,
}

/// Parses the `server:` section.
pub fn parse_settings(
    node: &marked_yaml::Node,
    file: &Path,
) -> Result<ServerSettings, Vec<SpecError>> {
    let raw: RawServer = decode(node, file, "server").map_err(|e| vec![e])?;
    let mut s = ServerSettings::default();
    let mut errors = Vec::new();
    let here = || Location::at(file, node.span().start());
    if let Some(l) = raw.listen {
        s.listen = l;
    }
    s.base_url = raw.base_url;
    s.tokens = raw.tokens.unwrap_or_default();
    s.anonymous = raw.anonymous;
    if let Some(g) = raw.shutdown_grace {
        match crate::spec::duration::parse_duration(&g) {
            Ok(d) => s.shutdown_grace = d,
            Err(m) => errors.push(SpecError::new(
                here(),
                Some("server.shutdown_grace".into()),
                m,
            )),
        }
    }
    let mut names = std::collections::HashSet::new();
    for t in &s.tokens {
        if !names.insert(t.name.clone()) {
            errors.push(SpecError::new(
                here(),
                Some("server.tokens".into()),
                format!("two tokens are named `{}`", t.name),
            ));
        }
    }
    if errors.is_empty() {
        Ok(s)
    } else {
        Err(errors)
    }
}
