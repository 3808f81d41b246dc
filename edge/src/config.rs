//! The daemon's configuration: embedded defaults, then a TOML file, then `SWITCHBOARD_<KEY>`
//! environment variables, then command-line flags, each overriding the one before.
//!
//! Keys are flat (`frame_bytes_max`, `jwt_issuer`), so that every key has exactly one
//! environment variable. An unknown key, in the file or the environment, is an error that
//! names it: a misspelt limit must not silently fall back to its default. Every key and its
//! default is in docs/configuration.md (a test keeps the two in step).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Every setting, with its default.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// WebSocket, REST and metrics (TCP).
    pub listen: String,
    /// QUIC clients (UDP).
    pub quic_listen: String,
    /// The backplane between nodes (UDP).
    pub backplane_listen: String,
    pub data_dir: PathBuf,
    /// Shards (threads, one per core); 0: one per available core.
    pub shards: usize,
    /// Pin shard and store threads to cores (shard i and store shard i to core i). Off for
    /// several nodes sharing one host, which would otherwise all crowd the same cores.
    pub pin_threads: bool,
    /// Connections the process holds at most (shared evenly by the shards). Sockets live in
    /// io_uring tables, not the descriptor table, so this may exceed the open-files limit.
    pub connections_max: usize,
    /// Serve a raw WebSocket echo at `/v1/echo` (conformance suites).
    pub echo_endpoint: bool,

    pub heartbeat_ms: u64,
    /// A socket must complete `hello` within this, or it is closed with 4001.
    pub auth_timeout_ms: u64,
    pub frame_bytes_max: usize,
    pub message_bytes_max: usize,
    pub head_bytes_max: usize,
    /// A connection's outbound queue; past it the connection is closed with 4009.
    pub outbox_bytes_max: usize,
    pub receipts_fanout_max: usize,
    pub group_members_max: usize,
    pub notify_interval_ms: u64,

    pub sends_per_s: u32,
    pub sends_burst: u32,
    pub typing_per_s: u32,
    pub syncs_per_s: u32,
    /// Refusals in a row before a connection is closed with 4008.
    pub rate_refusals_max: u32,

    /// `HS256` (with `jwt_secret_file`), `EdDSA` or `ES256` (with `jwt_public_key_file`).
    pub jwt_algorithm: String,
    /// Empty: `<data_dir>/jwt.secret`, created with a random secret if missing.
    pub jwt_secret_file: Option<PathBuf>,
    pub jwt_public_key_file: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// Browser origins allowed to connect; empty: any.
    pub allowed_origins: Vec<String>,
    /// `wss://` and `https://` when both are set.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,

    /// Logs on stderr: `text` (for people) or `json` (one object per line, for collectors).
    pub log_format: String,
    /// `always` (durable) or `never` (benchmarks only: loses acknowledged messages on power loss).
    pub fsync: String,
    pub segment_bytes_max: u64,
    /// Delete log segments older than this; 0: keep.
    pub retention_age_ms: u64,
    /// Delete the oldest log segments past this size per shard; 0: keep.
    pub retention_bytes_max: u64,
    /// How often each store shard applies the retention policy.
    pub retention_check_ms: u64,

    /// This node's number in its cluster (1..); 0: a single node with no backplane.
    pub node_id: u16,
    /// `both` (connections and partitions), `edge` (connections only) or `store` (partitions
    /// only).
    pub role: String,
    /// The other nodes: `"ID@HOST:PORT"` (their backplane address), with `/edge` or `/store`
    /// after it for a node whose role is not `both`.
    pub peers: Vec<String>,
    /// The cluster CA's certificate, and this node's certificate and key (PEM), for the
    /// backplane's mutual TLS (`switchboard-ctl cluster certs` writes them).
    pub cluster_ca_file: Option<PathBuf>,
    pub node_cert_file: Option<PathBuf>,
    pub node_key_file: Option<PathBuf>,
    /// Conversations are hashed into this many partitions, each owned by one store node. Fixed
    /// when a store's data folder is created.
    pub partitions: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7400".into(),
            quic_listen: "127.0.0.1:7401".into(),
            backplane_listen: "127.0.0.1:7402".into(),
            data_dir: "./data".into(),
            shards: 0,
            pin_threads: true,
            connections_max: 1_000_000,
            echo_endpoint: false,
            heartbeat_ms: 30_000,
            auth_timeout_ms: 5_000,
            frame_bytes_max: 64 * 1024,
            message_bytes_max: 16 * 1024,
            head_bytes_max: 8 * 1024,
            outbox_bytes_max: 1 << 20,
            receipts_fanout_max: 256,
            group_members_max: 1_000,
            notify_interval_ms: 1_000,
            sends_per_s: 50,
            sends_burst: 100,
            typing_per_s: 2,
            syncs_per_s: 20,
            rate_refusals_max: 50,
            jwt_algorithm: "HS256".into(),
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            allowed_origins: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            log_format: "text".into(),
            fsync: "always".into(),
            segment_bytes_max: 128 << 20,
            retention_age_ms: 0,
            retention_bytes_max: 0,
            retention_check_ms: 60_000,
            node_id: 0,
            role: "both".into(),
            peers: Vec::new(),
            cluster_ca_file: None,
            node_cert_file: None,
            node_key_file: None,
            partitions: 256,
        }
    }
}

/// What is wrong with a configuration, naming the key and where it came from.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Keys whose default is "not set" (absent from the serialized defaults).
const OPTIONAL_KEYS: [&str; 9] = [
    "jwt_secret_file",
    "jwt_public_key_file",
    "jwt_issuer",
    "jwt_audience",
    "tls_cert_file",
    "tls_key_file",
    "cluster_ca_file",
    "node_cert_file",
    "node_key_file",
];

/// The prefix of every environment variable that sets a key.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

impl Config {
    /// Defaults, then the file (if any), then the environment (`SWITCHBOARD_<KEY>` entries of
    /// `env`), then `flags` (key, value) pairs. Values from the environment and flags are TOML
    /// values (`65536`, `true`, `["a","b"]`); anything that does not parse as one is a string.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::try_from(Config::default()).expect("defaults serialize");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            let from_file: toml::Table =
                text.parse().map_err(|e| ConfigError(format!("{}: not TOML: {e}", path.display())))?;
            for (k, v) in from_file {
                set(&mut table, &k, v, &format!("{}", path.display()))?;
            }
        }
        let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        env.sort();
        for (k, v) in env {
            let key = k[ENV_PREFIX.len()..].to_ascii_lowercase();
            set(&mut table, &key, value(&v), &format!("environment variable {k}"))?;
        }
        for (k, v) in flags {
            set(&mut table, k, value(v), &format!("flag --{}", k.replace('_', "-")))?;
        }
        let config: Config = table.try_into().map_err(|e: toml::de::Error| ConfigError(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// Relations between keys that a type cannot express.
    fn check(&self) -> Result<(), ConfigError> {
        let fail = |why: String| Err(ConfigError(why));
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return fail(format!("log_format must be \"text\" or \"json\", not {:?}", self.log_format));
        }
        if !matches!(self.fsync.as_str(), "always" | "never") {
            return fail(format!("fsync must be \"always\" or \"never\", not {:?}", self.fsync));
        }
        if !matches!(self.jwt_algorithm.as_str(), "HS256" | "EdDSA" | "ES256") {
            return fail(format!("jwt_algorithm must be HS256, EdDSA or ES256, not {:?}", self.jwt_algorithm));
        }
        if self.jwt_algorithm != "HS256" && self.jwt_public_key_file.is_none() {
            return fail(format!("jwt_algorithm {} needs jwt_public_key_file", self.jwt_algorithm));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return fail("tls_cert_file and tls_key_file go together".into());
        }
        if self.message_bytes_max > self.frame_bytes_max {
            return fail("message_bytes_max cannot exceed frame_bytes_max".into());
        }
        if self.message_bytes_max > switchboard_store::limits::BODY_BYTES_MAX {
            return fail(format!("message_bytes_max cannot exceed {}", switchboard_store::limits::BODY_BYTES_MAX));
        }
        if self.connections_max == 0 {
            return fail("connections_max must be at least 1".into());
        }
        if self.outbox_bytes_max < self.frame_bytes_max + crate::ws::FRAME_HEADER_BYTES_MAX {
            return fail("outbox_bytes_max must hold at least one frame of frame_bytes_max".into());
        }
        crate::cluster::Cluster::from_config(self).map(|_| ()).map_err(ConfigError)
    }

    /// The effective configuration as TOML (`switchboard --print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration serializes")
    }
}

fn value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// Sets `key`, which must be one of the configuration's: a key of the defaults' table (every
/// key with a value) or an optional one.
fn set(table: &mut toml::Table, key: &str, v: toml::Value, source: &str) -> Result<(), ConfigError> {
    if !table.contains_key(key) && !OPTIONAL_KEYS.contains(&key) {
        return Err(ConfigError(format!("{source}: unknown key {key:?}")));
    }
    table.insert(key.to_string(), v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_override_in_order() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("switchboard.toml");
        std::fs::write(&file, "frame_bytes_max = 100000\nshards = 3\nallowed_origins = [\"https://a\"]\n").unwrap();
        let c = Config::load(
            Some(&file),
            env(&[("SWITCHBOARD_SHARDS", "4"), ("SWITCHBOARD_JWT_ISSUER", "sb"), ("HOME", "/root")]),
            &[("data_dir", "/var/sb".into())],
        )
        .unwrap();
        assert_eq!(c.frame_bytes_max, 100_000);
        assert_eq!(c.shards, 4, "the environment beats the file");
        assert_eq!(c.jwt_issuer.as_deref(), Some("sb"));
        assert_eq!(c.allowed_origins, vec!["https://a"]);
        assert_eq!(c.data_dir, PathBuf::from("/var/sb"));
        assert_eq!(c.listen, "127.0.0.1:7400");
        let again = Config::load(None, env(&[]), &[]).unwrap();
        assert_eq!(again, Config::default());
        // The printed configuration loads back to the same.
        std::fs::write(&file, c.to_toml()).unwrap();
        assert_eq!(Config::load(Some(&file), env(&[]), &[]).unwrap(), c);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mistakes_name_the_key_and_where_it_came_from() {
        let e = Config::load(None, env(&[("SWITCHBOARD_FRAME_BYTES_MAXX", "1")]), &[]).unwrap_err();
        assert!(e.0.contains("SWITCHBOARD_FRAME_BYTES_MAXX") && e.0.contains("frame_bytes_maxx"), "{e}");
        let e = Config::load(None, env(&[("SWITCHBOARD_SHARDS", "many")]), &[]).unwrap_err();
        assert!(e.0.contains("shards"), "{e}");
        let e = Config::load(None, env(&[]), &[("log_format", "xml".into())]).unwrap_err();
        assert!(e.0.contains("log_format"), "{e}");
        let e = Config::load(None, env(&[]), &[("fsync", "sometimes".into())]).unwrap_err();
        assert!(e.0.contains("fsync"), "{e}");
        let e = Config::load(None, env(&[]), &[("tls_cert_file", "/c.pem".into())]).unwrap_err();
        assert!(e.0.contains("tls_key_file"), "{e}");
        let e = Config::load(None, env(&[("SWITCHBOARD_MESSAGE_BYTES_MAX", "70000")]), &[]).unwrap_err();
        assert!(e.0.contains("message_bytes_max"), "{e}");
        let e = Config::load(None, env(&[("SWITCHBOARD_JWT_ALGORITHM", "EdDSA")]), &[]).unwrap_err();
        assert!(e.0.contains("jwt_public_key_file"), "{e}");
        let e = Config::load(Some(Path::new("/nonexistent/sb.toml")), env(&[]), &[]).unwrap_err();
        assert!(e.0.contains("/nonexistent/sb.toml"), "{e}");
        let e = Config::load(None, env(&[]), &[("role", "relay".into())]).unwrap_err();
        assert!(e.0.contains("role"), "{e}");
        let e = Config::load(None, env(&[("SWITCHBOARD_PEERS", r#"["2@127.0.0.1:7412"]"#)]), &[]).unwrap_err();
        assert!(e.0.contains("node_id"), "{e}");
    }

    /// docs/configuration.md lists every key with its default.
    #[test]
    fn every_key_is_documented_with_its_default() {
        let doc = include_str!("../../docs/configuration.md");
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (key, value) in &defaults {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{key}` |")))
                .unwrap_or_else(|| panic!("{key} is not in docs/configuration.md"));
            assert!(
                row.contains(&format!("`{value}`")),
                "{key}: docs/configuration.md does not give the default {value}"
            );
        }
        for key in OPTIONAL_KEYS {
            assert!(doc.contains(&format!("| `{key}` |")), "{key} is not in docs/configuration.md");
        }
    }
}
