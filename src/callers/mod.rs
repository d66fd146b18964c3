//! Who is calling: the callers file (`GATEWAY_CALLERS_FILE`), the token
//! check in front of the VideoGeneration service (`layer.rs`), and each
//! caller's quotas (`quota.rs`).
//!
//! The file holds only SHA-256 digests of tokens; a token is hashed and
//! compared with every entry in constant time, so neither the file nor the
//! timing of a refusal tells which callers exist.

pub mod layer;
pub mod quota;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio_util::sync::CancellationToken;

use crate::config::Secret;

/// The name of every call made without caller authentication.
pub const ANONYMOUS: &str = "anonymous";
/// How often the callers file is read again for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// One caller's quotas; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quotas {
    pub creates_per_minute: Option<u64>,
    pub creates_per_day: Option<u64>,
    pub credits_per_day: Option<f64>,
}

impl Quotas {
    pub fn any(&self) -> bool {
        self.creates_per_minute.is_some()
            || self.creates_per_day.is_some()
            || self.credits_per_day.is_some()
    }
}

/// A caller as resolved for one call.
#[derive(Debug)]
pub struct CallerEntry {
    /// From the file (a bounded set, so a metric label) or `anonymous`.
    pub name: Arc<str>,
    pub quotas: Quotas,
    /// The caller's own kie.ai key, read from the environment variable the
    /// file names.
    pub kie_key: Option<Secret>,
    token_sha256: [u8; 32],
    cert_identity: Option<String>,
}

/// Cheap to clone: each call's request extensions hold one.
#[derive(Clone, Debug)]
pub struct Caller(Arc<CallerEntry>);

impl std::ops::Deref for Caller {
    type Target = CallerEntry;
    fn deref(&self) -> &CallerEntry {
        &self.0
    }
}

impl Caller {
    /// Every call when the gateway takes no caller tokens.
    pub fn anonymous() -> Self {
        static ANON: std::sync::OnceLock<Caller> = std::sync::OnceLock::new();
        ANON.get_or_init(|| {
            Caller(Arc::new(CallerEntry {
                name: ANONYMOUS.into(),
                quotas: Quotas::default(),
                kie_key: None,
                token_sha256: [0; 32],
                cert_identity: None,
            }))
        })
        .clone()
    }

    pub fn is_anonymous(&self) -> bool {
        &*self.name == ANONYMOUS
    }
}

/// The callers of one version of the file.
#[derive(Debug, Default)]
pub struct Table {
    entries: Vec<Caller>,
}

impl Table {
    /// The caller whose token this is. Every entry is compared, in constant
    /// time, whether or not one matched.
    pub fn by_token(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = u32::MAX;
        for (i, entry) in self.entries.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&i, entry.token_sha256.ct_eq(&digest));
        }
        self.entries.get(found as usize).cloned()
    }

    /// The caller whose client certificate names `identity` (a SPIFFE ID or
    /// DNS name, as the TLS layer reports it).
    pub fn by_cert_identity(&self, identity: &str) -> Option<Caller> {
        self.entries
            .iter()
            .find(|c| c.cert_identity.as_deref() == Some(identity))
            .cloned()
    }

    pub fn by_name(&self, name: &str) -> Option<Caller> {
        self.entries.iter().find(|c| &*c.name == name).cloned()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parses and checks a callers file's text; the error is one line.
    /// `env` looks up the variables that hold callers' kie.ai keys.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let file: FileDoc = toml::from_str(text).map_err(|e| one_line(text, &e))?;
        if file.caller.is_empty() {
            return Err("it lists no [[caller]]".into());
        }
        let mut entries: Vec<Caller> = Vec::with_capacity(file.caller.len());
        for (n, raw) in file.caller.into_iter().enumerate() {
            let at = format!("[[caller]] #{} ({:?})", n + 1, raw.name);
            if !valid_name(&raw.name) {
                return Err(format!(
                    "{at}: a name is 1-64 of A-Z a-z 0-9 . _ - (it is a metric label)"
                ));
            }
            if raw.name == ANONYMOUS {
                return Err(format!(
                    "{at}: {ANONYMOUS:?} is the name of unauthenticated calls"
                ));
            }
            let token_sha256 = parse_digest(&raw.token_sha256).ok_or_else(|| {
                format!("{at}: token_sha256 must be 64 hex digits (the SHA-256 of the token)")
            })?;
            if let Some(credits) = raw.credits_per_day
                && !(credits.is_finite() && credits >= 0.0)
            {
                return Err(format!("{at}: credits_per_day must be a number >= 0"));
            }
            let kie_key = match &raw.kie_api_key_env {
                None => None,
                Some(var) => {
                    let key = env(var).filter(|k| !k.trim().is_empty()).ok_or_else(|| {
                        format!("{at}: kie_api_key_env names {var:?}, which is not set")
                    })?;
                    Some(Secret::new(key.trim()))
                }
            };
            for earlier in &entries {
                if *earlier.name == *raw.name {
                    return Err(format!("{at}: the name is used twice"));
                }
                if bool::from(earlier.token_sha256.ct_eq(&token_sha256)) {
                    return Err(format!(
                        "{at}: the same token_sha256 as {:?}: two callers cannot share a token",
                        &*earlier.name
                    ));
                }
                if raw.cert_identity.is_some() && earlier.cert_identity == raw.cert_identity {
                    return Err(format!(
                        "{at}: the same cert_identity as {:?}",
                        &*earlier.name
                    ));
                }
            }
            entries.push(Caller(Arc::new(CallerEntry {
                name: raw.name.into(),
                quotas: Quotas {
                    creates_per_minute: raw.creates_per_minute,
                    creates_per_day: raw.creates_per_day,
                    credits_per_day: raw.credits_per_day,
                },
                kie_key,
                token_sha256,
                cert_identity: raw.cert_identity,
            })));
        }
        Ok(Self { entries })
    }
}

/// The file's shape. Unknown fields are refused: a misspelt quota would
/// otherwise be silently unlimited.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    caller: Vec<RawCaller>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    name: String,
    token_sha256: String,
    creates_per_minute: Option<u64>,
    creates_per_day: Option<u64>,
    credits_per_day: Option<f64>,
    /// The environment variable holding this caller's own kie.ai key (never
    /// the key itself in the file).
    kie_api_key_env: Option<String>,
    /// The identity in this caller's client certificate (a SPIFFE URI SAN
    /// or DNS SAN), when mTLS is on.
    cert_identity: Option<String>,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A TOML error as one line with its line and column: the start-up error
/// and the reload warning are single lines.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().lines().next().unwrap_or("invalid TOML").trim();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

/// The callers of the running gateway: the last good version of the file.
#[derive(Clone, Debug)]
pub struct Callers {
    table: Arc<RwLock<Arc<Table>>>,
    path: PathBuf,
}

impl Callers {
    /// Reads the file; any error stops the start, in one line.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let table = read(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(file = %path.display(), callers = table.len(), "caller tokens required");
        Ok(Self {
            table: Arc::new(RwLock::new(Arc::new(table))),
            path: path.to_owned(),
        })
    }

    pub fn current(&self) -> Arc<Table> {
        self.table.read().clone()
    }

    /// Who a call is: its client certificate's identity first (when mTLS
    /// gives one that the file names), then its bearer token.
    pub fn resolve(&self, cert_identity: Option<&str>, token: Option<&str>) -> Option<Caller> {
        let table = self.current();
        if let Some(caller) = cert_identity.and_then(|id| table.by_cert_identity(id)) {
            return Some(caller);
        }
        token.and_then(|t| table.by_token(t))
    }

    /// Reads the file again every few seconds and swaps in a good new
    /// version; a bad one is a warning and the last good one stays.
    pub fn spawn_reload(&self, shutdown: CancellationToken) {
        let callers = self.clone();
        tokio::spawn(async move {
            let mut last = std::fs::read(&callers.path).ok();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RELOAD_EVERY) => {}
                }
                let now = std::fs::read(&callers.path).ok();
                if now == last {
                    continue;
                }
                last.clone_from(&now);
                match read(&callers.path) {
                    Ok(table) => {
                        tracing::info!(callers = table.len(), "callers file reloaded");
                        *callers.table.write() = Arc::new(table);
                    }
                    Err(e) => tracing::warn!(
                        error = e,
                        "callers file not reloaded; the last good version stays"
                    ),
                }
            }
        });
    }
}

fn read(path: &Path) -> Result<Table, String> {
    let at = format!("callers file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| format!("{at}: {e}"))?;
    Table::parse(&text, |var| std::env::var(var).ok()).map_err(|e| format!("{at}: {e}"))
}

/// The hex SHA-256 of a token, as the callers file holds it.
pub fn token_sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, token: &str) -> String {
        format!(
            "[[caller]]\nname = {name:?}\ntoken_sha256 = {:?}\n",
            token_sha256_hex(token)
        )
    }

    #[test]
    fn a_token_finds_its_caller_and_no_other() {
        let text = format!("{}{}", entry("a", "tok-a"), entry("b", "tok-b"));
        let table = Table::parse(&text, |_| None).expect("valid");
        assert_eq!(
            table.by_token("tok-b").map(|c| c.name.clone()),
            Some("b".into())
        );
        assert_eq!(
            table.by_token("tok-a").map(|c| c.name.clone()),
            Some("a".into())
        );
        assert!(table.by_token("tok-c").is_none());
        assert!(table.by_token("").is_none());
    }

    #[test]
    fn a_bad_file_is_refused_in_one_line() {
        let cases = [
            ("[[caller]\nname=1", "line 1"),
            (
                &format!("{}{}", entry("a", "x"), entry("a", "y")),
                "used twice",
            ),
            (
                &format!("{}{}", entry("a", "x"), entry("b", "x")),
                "share a token",
            ),
            (&entry("anonymous", "x"), "unauthenticated"),
            (&entry("a b", "x"), "metric label"),
            ("", "no [[caller]]"),
            (
                "[[caller]]\nname = \"a\"\ntoken_sha256 = \"ab\"\n",
                "64 hex",
            ),
            (
                &format!("{}creates_per_minut = 3\n", entry("a", "x")),
                "unknown field",
            ),
            (
                &format!("{}kie_api_key_env = \"NOPE\"\n", entry("a", "x")),
                "not set",
            ),
        ];
        for (text, expected) in cases {
            let e = Table::parse(text, |_| None).expect_err(text);
            assert!(e.contains(expected), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
