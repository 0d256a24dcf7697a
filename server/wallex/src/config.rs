//! One configuration: every setting of the service in one tree, read in layers and checked in one
//! place.
//!
//! Layers, each overriding the one before: the defaults; a TOML file (`--config FILE`); the
//! environment (`WALLEX_<SECTION>__<KEY>`, `__` between levels, e.g.
//! `WALLEX_PIPELINE__WRITER__MAX_BATCH=512`, plus the established `DATABASE_URL`, `KAFKA_BROKERS`
//! and `PORT`); then flags (the shorthands `serve` has, and `--set section.key=value` for any
//! setting). A key that names no setting is refused, naming it; so is a value of the wrong type, and
//! [`Config::validate`] refuses settings that contradict each other. Nothing is clamped.
//! `wallex config` prints the effective tree, with secrets masked.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use wallex_pipeline::{ConfigError, PipelineConfig};

/// Environment variables that hold a setting start with this; `__` separates levels.
pub const ENV_PREFIX: &str = "WALLEX_";
const ENV_LEVEL_SEPARATOR: &str = "__";

/// The port when neither the file, `PORT` nor a flag names one.
pub const DEFAULT_PORT: u16 = 3000;

// One relay round is published in one producer flight: the default must fit the producer's queue
// (a configured one is checked in `Config::validate`).
const _: () = assert!(wallex_pipeline::relay::DEFAULT_BATCH <= wallex_kafka::PRODUCER_QUEUE_MESSAGES);

/// Every setting of `wallex serve`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub bus: BusConfig,
    pub pipeline: PipelineConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
}

/// This instance among several on one store (same `DATABASE_URL` and `KAFKA_BROKERS`): one holds
/// the writer lease (`pipeline.lease`) and the others forward to it (see `docs/OPERATIONS.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique among the instances on one store and stable across restarts (a restarted writer
    /// takes its own lease back at once). Default: `<hostname>:<port>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Where the other instances reach this one's API, plain HTTP, to forward writes to it while
    /// it holds the lease (`http://10.0.0.5:3000`). Default: `http://<listen>`, with an
    /// unspecified address (`0.0.0.0`) replaced by the hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
}

impl ClusterConfig {
    /// The node as the pipeline's seat names it.
    pub fn node(&self, listen: SocketAddr) -> wallex_pipeline::Node {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let id = self.node_id.clone().unwrap_or_else(|| format!("{hostname}:{}", listen.port()));
        let address = self.advertise_url.clone().unwrap_or_else(|| {
            if listen.ip().is_unspecified() {
                format!("http://{hostname}:{}", listen.port())
            } else {
                format!("http://{listen}")
            }
        });
        wallex_pipeline::Node { id, address }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port the REST API listens on.
    pub listen: SocketAddr,
    /// Refuse (428) every POST that submits a command without an `Idempotency-Key`. Off by
    /// default: the original service's clients send none.
    pub require_idempotency_key: bool,
    /// API requests that may run at once; beyond it a request is answered 503 `overloaded` at
    /// once (nothing done, `Retry-After`) instead of queueing. Health, metrics and the OpenAPI
    /// document are not counted.
    pub max_concurrent_requests: usize,
    /// Longest an API request may take, in milliseconds; then it is answered 503 `timeout` (a
    /// command's outcome is then unknown: retry with the same `Idempotency-Key`).
    pub request_timeout_ms: u64,
    /// Longest a history read (`GET /ledger/wallet/{id}`) waits for the ledger projection to
    /// reach the wallet's committed version, in milliseconds; past it, the answer carries
    /// `Wallex-Behind` (how many versions it lacks).
    pub read_wait_ms: u64,
    /// Where the operational routes (`/health…`, `/metrics`) are served, open, instead of on
    /// `listen` behind a key; `/health/live`, `/health/ready` and `/openapi.json` stay on both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_listen: Option<SocketAddr>,
    /// Serve without API keys on an address other than loopback. Without it, a server whose
    /// store holds no key refuses to start there: anyone who reached it could move any money.
    pub insecure_allow_anonymous: bool,
    /// The token bucket of a key with each scope (a key gets its most generous scope's).
    pub rate_limits: wallex_http::access::RateLimits,
    /// TLS: the certificate chain (PEM). With `tls_key`, the API is served over HTTPS (HTTP/1.1
    /// and HTTP/2); both are read again on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key (PEM) of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The most operations one `POST /batch` may hold (1 to 8,189).
    pub max_batch_operations: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        let limits = wallex_http::Limits::default();
        HttpConfig {
            // Loopback: another address is a choice to make (and needs API keys, or
            // `insecure_allow_anonymous`).
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            require_idempotency_key: false,
            max_concurrent_requests: limits.max_concurrent,
            request_timeout_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
            read_wait_ms: u64::try_from(limits.read_wait.as_millis()).unwrap_or(u64::MAX),
            ops_listen: None,
            insecure_allow_anonymous: false,
            rate_limits: wallex_http::access::RateLimits::default(),
            tls_cert: None,
            tls_key: None,
            max_batch_operations: wallex_http::batch::DEFAULT_BATCH_OPERATIONS,
        }
    }
}

impl HttpConfig {
    pub fn limits(&self) -> wallex_http::Limits {
        wallex_http::Limits {
            max_concurrent: self.max_concurrent_requests,
            timeout: std::time::Duration::from_millis(self.request_timeout_ms),
            read_wait: std::time::Duration::from_millis(self.read_wait_ms),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// PostgreSQL (`postgres://…`); without it, the embedded store in `data_dir`. A secret: it may
    /// hold a password, so it is masked wherever it is printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig { database_url: None, data_dir: PathBuf::from("wallex-data") }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Kafka bootstrap servers (`host:port,…`); without them, the in-process bus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_brokers: Option<String>,
    /// The events topic.
    pub topic: String,
    /// Partitions of the events topic when Wallex creates it.
    pub partitions: i32,
    /// Where messages no projector can decode go, with the reason in their headers.
    pub dead_letter_topic: String,
    pub dead_letter_partitions: i32,
    /// Replicas per partition when Wallex creates the topics: 3 in production (a broker may be
    /// lost without losing an acknowledged event); 1 only for a single-broker test setup.
    pub replication_factor: i32,
    /// The topics' `min.insync.replicas`: how many replicas must have an event before the broker
    /// acknowledges it (2 of 3 by default); at most `replication_factor`.
    pub min_insync_replicas: i32,
    /// How long a produce may wait for its acknowledgement, in milliseconds.
    pub message_timeout_ms: u64,
    /// How long a consumer group waits for a silent member before moving its partitions, in
    /// milliseconds: the bound on a projection stall after a crash.
    pub session_timeout_ms: u64,
}

impl Default for BusConfig {
    fn default() -> BusConfig {
        let kafka = wallex_kafka::KafkaConfig::new(String::new());
        BusConfig {
            kafka_brokers: None,
            topic: kafka.topic,
            partitions: kafka.partitions,
            dead_letter_topic: kafka.dead_letter_topic,
            dead_letter_partitions: kafka.dead_letter_partitions,
            replication_factor: kafka.replication_factor,
            min_insync_replicas: kafka.min_insync_replicas,
            message_timeout_ms: kafka.message_timeout_ms,
            session_timeout_ms: kafka.session_timeout_ms,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// The log filter (`tracing` directives); `RUST_LOG`, when set, wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig { filter: "info,tower_http=warn".to_owned() }
    }
}

/// The flags that set configuration, as `serve`, `migrate` and `config` accept them.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConfigArgs {
    /// A TOML file of settings (see `wallex config` for every key and its default).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Sets one setting, overriding the file and the environment: `--set pipeline.writer.max_batch=512`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Address to listen on (`http.listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where the embedded store keeps its file (`store.data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Most commands in one group commit (`pipeline.writer.max_batch`).
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// The events topic, when Kafka is used (`bus.topic`).
    #[arg(long)]
    pub kafka_topic: Option<String>,
    /// The dead-letter topic, when Kafka is used (`bus.dead_letter_topic`).
    #[arg(long)]
    pub kafka_dlq_topic: Option<String>,
    /// Where the operational routes are served, open (`http.ops_listen`).
    #[arg(long)]
    pub ops_listen: Option<SocketAddr>,
    /// Serve without API keys on an address other than loopback (`http.insecure_allow_anonymous`).
    #[arg(long)]
    pub insecure_allow_anonymous: bool,
    /// The TLS certificate chain, PEM (`http.tls_cert`).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key, PEM (`http.tls_key`).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

impl Config {
    /// The effective configuration: defaults, then the file, then `environment`, then the flags;
    /// validated.
    pub fn load(args: &ConfigArgs, environment: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Config> {
        let defaults = toml::Table::try_from(Config::default()).expect("the defaults serialize");
        let mut tree = defaults.clone();
        if let Some(path) = &args.config {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let file: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            merge(&mut tree, file);
        }
        // Sorted, so that of two names for one setting the outcome does not depend on the
        // environment's order.
        let mut environment: Vec<(String, String)> = environment.into_iter().collect();
        environment.sort();
        for (name, value) in &environment {
            let key = match name.as_str() {
                "DATABASE_URL" => "store.database_url".to_owned(),
                "KAFKA_BROKERS" => "bus.kafka_brokers".to_owned(),
                "PORT" => {
                    let port: u16 = value.parse().with_context(|| format!("PORT={value} is not a port number"))?;
                    let listen = tree_listen(&tree)?;
                    set(&mut tree, &defaults, "http.listen", &SocketAddr::new(listen.ip(), port).to_string())
                        .context("PORT")?;
                    continue;
                }
                _ => match name.strip_prefix(ENV_PREFIX) {
                    // Only names with a level separator are settings (WALLEX_CACHE and friends
                    // belong to the scripts).
                    Some(rest) if rest.contains(ENV_LEVEL_SEPARATOR) => {
                        rest.to_ascii_lowercase().replace(ENV_LEVEL_SEPARATOR, ".")
                    }
                    _ => continue,
                },
            };
            set(&mut tree, &defaults, &key, value).with_context(|| format!("environment variable {name}"))?;
        }
        let shorthands = [
            ("http.listen", args.listen.map(|listen| listen.to_string())),
            ("store.data_dir", args.data_dir.as_ref().map(|dir| dir.display().to_string())),
            ("pipeline.writer.max_batch", args.max_batch.map(|max| max.to_string())),
            ("bus.topic", args.kafka_topic.clone()),
            ("bus.dead_letter_topic", args.kafka_dlq_topic.clone()),
            ("http.ops_listen", args.ops_listen.map(|listen| listen.to_string())),
            ("http.insecure_allow_anonymous", args.insecure_allow_anonymous.then(|| "true".to_owned())),
            ("http.tls_cert", args.tls_cert.as_ref().map(|path| path.display().to_string())),
            ("http.tls_key", args.tls_key.as_ref().map(|path| path.display().to_string())),
        ];
        for (key, value) in shorthands {
            if let Some(value) = value {
                set(&mut tree, &defaults, key, &value).with_context(|| format!("flag for {key}"))?;
            }
        }
        for assignment in &args.set {
            let Some((key, value)) = assignment.split_once('=') else {
                bail!("--set {assignment}: expected KEY=VALUE");
            };
            set(&mut tree, &defaults, key.trim(), value.trim()).with_context(|| format!("--set {assignment}"))?;
        }
        let config: Config = tree.try_into().context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses a setting that contradicts another or cannot work, naming it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.pipeline.validate()?;
        if self.cluster.node_id.as_deref().is_some_and(|id| id.trim().is_empty() || id.len() > 200) {
            return Err(ConfigError::new("cluster.node_id", "must be 1 to 200 characters"));
        }
        if self.cluster.advertise_url.as_deref().is_some_and(|url| !url.starts_with("http://")) {
            return Err(ConfigError::new(
                "cluster.advertise_url",
                "must be an http:// URL (instances forward to each other over plain HTTP on their network)",
            ));
        }
        if self.store.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("store.data_dir", "must name a directory"));
        }
        if let Some(url) = &self.store.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new("store.database_url", "must be a postgres:// or postgresql:// URL"));
        }
        if self.bus.kafka_brokers.as_deref().is_some_and(|brokers| brokers.trim().is_empty()) {
            return Err(ConfigError::new("bus.kafka_brokers", "is set but empty"));
        }
        if self.bus.topic.is_empty() || self.bus.dead_letter_topic.is_empty() {
            return Err(ConfigError::new("bus.topic", "the events and dead-letter topics must be named"));
        }
        if self.bus.topic == self.bus.dead_letter_topic {
            return Err(ConfigError::new("bus.dead_letter_topic", "must differ from bus.topic"));
        }
        if self.bus.kafka_brokers.is_some() && self.pipeline.relay.batch > wallex_kafka::PRODUCER_QUEUE_MESSAGES {
            return Err(ConfigError::new(
                "pipeline.relay.batch",
                format!(
                    "one round is published in one flight and must fit the Kafka producer's queue ({} messages)",
                    wallex_kafka::PRODUCER_QUEUE_MESSAGES
                ),
            ));
        }
        if self.http.max_batch_operations == 0
            || self.http.max_batch_operations > wallex_http::batch::MAX_BATCH_OPERATIONS
        {
            return Err(ConfigError::new(
                "http.max_batch_operations",
                format!(
                    "must be 1..={}, not {}",
                    wallex_http::batch::MAX_BATCH_OPERATIONS,
                    self.http.max_batch_operations
                ),
            ));
        }
        if self.http.max_batch_operations > self.pipeline.writer.queue_depth {
            return Err(ConfigError::new(
                "http.max_batch_operations",
                format!(
                    "a batch is queued whole and must fit the writer's queue (pipeline.writer.queue_depth = {})",
                    self.pipeline.writer.queue_depth
                ),
            ));
        }
        if self.http.max_concurrent_requests == 0 {
            return Err(ConfigError::new("http.max_concurrent_requests", "must be at least 1"));
        }
        if self.http.request_timeout_ms == 0 {
            return Err(ConfigError::new("http.request_timeout_ms", "must be at least 1"));
        }
        if self.http.read_wait_ms >= self.http.request_timeout_ms {
            return Err(ConfigError::new(
                "http.read_wait_ms",
                format!("must be shorter than http.request_timeout_ms ({})", self.http.request_timeout_ms),
            ));
        }
        if let Err(detail) = self.http.rate_limits.validate() {
            return Err(ConfigError::new("http.rate_limits", detail));
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(ConfigError::new("http.tls_cert", "TLS needs both http.tls_cert and http.tls_key"));
        }
        if self.http.ops_listen.is_some_and(|ops| ops == self.http.listen) {
            return Err(ConfigError::new("http.ops_listen", "must differ from http.listen"));
        }
        if self.bus.replication_factor < 1 {
            return Err(ConfigError::new("bus.replication_factor", "must be at least 1"));
        }
        if self.bus.min_insync_replicas < 1 || self.bus.min_insync_replicas > self.bus.replication_factor {
            return Err(ConfigError::new(
                "bus.min_insync_replicas",
                format!("must be 1..=bus.replication_factor ({})", self.bus.replication_factor),
            ));
        }
        if self.bus.partitions < 1 || self.bus.dead_letter_partitions < 1 {
            return Err(ConfigError::new("bus.partitions", "topics need at least one partition"));
        }
        Ok(())
    }

    /// The Kafka settings, when Kafka is configured.
    pub fn kafka(&self) -> Option<wallex_kafka::KafkaConfig> {
        let brokers = self.bus.kafka_brokers.clone()?;
        let mut kafka = wallex_kafka::KafkaConfig::new(brokers);
        kafka.topic.clone_from(&self.bus.topic);
        kafka.partitions = self.bus.partitions;
        kafka.dead_letter_topic.clone_from(&self.bus.dead_letter_topic);
        kafka.dead_letter_partitions = self.bus.dead_letter_partitions;
        kafka.replication_factor = self.bus.replication_factor;
        kafka.min_insync_replicas = self.bus.min_insync_replicas;
        kafka.message_timeout_ms = self.bus.message_timeout_ms;
        kafka.session_timeout_ms = self.bus.session_timeout_ms;
        Some(kafka)
    }

    /// The effective configuration as TOML, with secrets masked: what `wallex config` prints.
    pub fn render(&self) -> String {
        let mut shown = self.clone();
        shown.store.database_url = shown.store.database_url.as_deref().map(mask_password);
        toml::to_string(&shown).expect("the configuration serializes")
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:****@host/db`.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "****".to_owned() };
    let Some((credentials, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:****@{host}"),
        None => url.to_owned(),
    }
}

fn tree_listen(tree: &toml::Table) -> anyhow::Result<SocketAddr> {
    let listen = tree.get("http").and_then(|http| http.get("listen")).and_then(toml::Value::as_str);
    listen.context("http.listen is not set")?.parse().context("http.listen is not an address")
}

/// Overlays `layer` onto `tree`, table by table.
fn merge(tree: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (tree.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(value)) => merge(existing, value),
            (_, value) => {
                tree.insert(key, value);
            }
        }
    }
}

fn lookup<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let mut value = table.get(*first)?;
    for part in rest {
        value = value.as_table()?.get(*part)?;
    }
    Some(value)
}

/// Keys that have no default (so are absent from the defaults tree) but are settings.
const OPTIONAL_KEYS: &[&str] = &[
    "store.database_url",
    "bus.kafka_brokers",
    "http.ops_listen",
    "http.tls_cert",
    "http.tls_key",
    "cluster.node_id",
    "cluster.advertise_url",
];

/// Sets `key` (dotted) to `text`, typed as the default at that key is (a string where it has none).
/// A key that names no setting is refused.
fn set(tree: &mut toml::Table, defaults: &toml::Table, key: &str, text: &str) -> anyhow::Result<()> {
    let path: Vec<&str> = key.split('.').collect();
    let default = lookup(defaults, &path);
    let value = match default {
        Some(toml::Value::Table(_)) => bail!("`{key}` is a section, not a setting"),
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(text.parse().with_context(|| format!("`{key}` takes an integer, not `{text}`"))?)
        }
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(text.parse().with_context(|| format!("`{key}` takes true or false, not `{text}`"))?)
        }
        Some(_) => toml::Value::String(text.to_owned()),
        None if OPTIONAL_KEYS.contains(&key) => toml::Value::String(text.to_owned()),
        None => bail!("`{key}` is not a setting (`wallex config` lists every one)"),
    };
    let (leaf, sections) = path.split_last().expect("split yields at least one part");
    let mut table = tree;
    for section in sections {
        table = table
            .entry((*section).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("`{section}` is a setting, not a section"))?;
    }
    table.insert((*leaf).to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The layering and the refusals, with the environment passed in (never the process's own).

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    fn file(text: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::with(text)
    }

    /// A file that removes itself, under the system's temporary directory.
    mod tempfile_path {
        pub struct TempFile(pub std::path::PathBuf);

        impl TempFile {
            pub fn with(text: &str) -> TempFile {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!("wallex-config-{}-{number}.toml", std::process::id()));
                std::fs::write(&path, text).unwrap();
                TempFile(path)
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_hold_without_any_layer() {
        let config = Config::load(&ConfigArgs::default(), Vec::new()).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.http.listen.port(), DEFAULT_PORT);
    }

    #[test]
    fn the_file_then_the_environment_then_flags_each_override_the_one_before() {
        let settings = file(
            "[http]\nlisten = \"127.0.0.1:4000\"\nmax_batch_operations = 5\n[pipeline.writer]\nmax_batch = 100\nqueue_depth = 7\n\
             [pipeline.relay]\nbatch = 11\n",
        );
        let args = ConfigArgs {
            config: Some(settings.0.clone()),
            set: vec!["pipeline.relay.batch=13".to_owned()],
            max_batch: Some(300),
            ..ConfigArgs::default()
        };
        let environment = env(&[
            ("WALLEX_PIPELINE__WRITER__MAX_BATCH", "200"),
            ("WALLEX_PIPELINE__RELAY__BATCH", "12"),
            ("PORT", "5000"),
            ("DATABASE_URL", "postgres://wallex:hunter2@db.internal/wallex"),
            ("WALLEX_CACHE", "/not/a/setting"),
        ]);
        let config = Config::load(&args, environment).unwrap();
        assert_eq!(config.http.listen, "127.0.0.1:5000".parse().unwrap(), "PORT keeps the file's address");
        assert_eq!(config.pipeline.writer.queue_depth, 7, "from the file");
        assert_eq!(config.pipeline.writer.max_batch, 300, "the flag beats the environment and the file");
        assert_eq!(config.pipeline.relay.batch, 13, "--set beats the environment and the file");
        assert_eq!(config.store.database_url.as_deref(), Some("postgres://wallex:hunter2@db.internal/wallex"));
        let shown = config.render();
        assert!(!shown.contains("hunter2"), "the password is masked: {shown}");
        assert!(shown.contains("postgres://wallex:****@db.internal/wallex"));
        assert_eq!(toml::from_str::<Config>(&Config::default().render()).unwrap(), Config::default());
    }

    #[test]
    fn a_key_that_names_no_setting_is_refused_naming_it() {
        let settings = file("[pipeline.writer]\nmax_bach = 100\n");
        let error = Config::load(&ConfigArgs { config: Some(settings.0.clone()), ..ConfigArgs::default() }, Vec::new())
            .unwrap_err();
        assert!(format!("{error:#}").contains("max_bach"), "{error:#}");
        let error =
            Config::load(&ConfigArgs::default(), env(&[("WALLEX_PIPELINE__WRITER__MAX_BACH", "1")])).unwrap_err();
        assert!(format!("{error:#}").contains("pipeline.writer.max_bach"), "{error:#}");
        let args = ConfigArgs { set: vec!["http.listn=1".to_owned()], ..ConfigArgs::default() };
        let error = Config::load(&args, Vec::new()).unwrap_err();
        assert!(format!("{error:#}").contains("http.listn"), "{error:#}");
        let args = ConfigArgs { set: vec!["pipeline.writer=1".to_owned()], ..ConfigArgs::default() };
        assert!(format!("{:#}", Config::load(&args, Vec::new()).unwrap_err()).contains("is a section"));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_the_key() {
        let error =
            Config::load(&ConfigArgs::default(), env(&[("WALLEX_PIPELINE__WRITER__MAX_BATCH", "many")])).unwrap_err();
        assert!(format!("{error:#}").contains("pipeline.writer.max_batch"), "{error:#}");
        let settings = file("[pipeline.writer]\nmax_batch = \"many\"\n");
        let error = Config::load(&ConfigArgs { config: Some(settings.0.clone()), ..ConfigArgs::default() }, Vec::new())
            .unwrap_err();
        assert!(format!("{error:#}").contains("max_batch"), "{error:#}");
        assert!(Config::load(&ConfigArgs::default(), env(&[("PORT", "http")])).is_err());
    }

    #[test]
    fn inconsistent_settings_are_refused_never_clamped() {
        let cases = [
            ("pipeline.writer.engine_retention_micros=100000000000", "pipeline.writer.engine_retention_micros"),
            ("pipeline.writer.max_batch=0", "pipeline.writer.max_batch"),
            ("pipeline.writer.max_batch=100000", "pipeline.writer.max_batch"),
            ("pipeline.projector.max_held=10", "pipeline.projector.max_held"),
            ("bus.dead_letter_topic=wallet-events", "bus.dead_letter_topic"),
            ("store.database_url=mysql://x", "store.database_url"),
            ("pipeline.relay.batch=0", "pipeline.relay.batch"),
            ("pipeline.relay.window=10", "pipeline.relay.window"),
            ("bus.replication_factor=0", "bus.replication_factor"),
            ("bus.min_insync_replicas=4", "bus.min_insync_replicas"),
            ("http.max_concurrent_requests=0", "http.max_concurrent_requests"),
            ("http.request_timeout_ms=0", "http.request_timeout_ms"),
            ("http.max_batch_operations=0", "http.max_batch_operations"),
            ("http.max_batch_operations=8190", "http.max_batch_operations"),
            ("pipeline.writer.queue_depth=999", "http.max_batch_operations"),
        ];
        for (assignment, field) in cases {
            let args = ConfigArgs { set: vec![assignment.to_owned()], ..ConfigArgs::default() };
            let error = Config::load(&args, Vec::new()).unwrap_err();
            let refused = error.downcast_ref::<ConfigError>().unwrap_or_else(|| panic!("{assignment}: {error:#}"));
            assert_eq!(refused.field, field, "{assignment}");
        }
        // A relay round larger than the producer's queue: fine in-process, refused with Kafka.
        let args = ConfigArgs {
            set: vec!["pipeline.relay.batch=200000".to_owned(), "pipeline.relay.window=200000".to_owned()],
            ..ConfigArgs::default()
        };
        assert!(Config::load(&args, Vec::new()).is_ok());
        let error = Config::load(&args, env(&[("KAFKA_BROKERS", "127.0.0.1:9092")])).unwrap_err();
        assert_eq!(error.downcast_ref::<ConfigError>().map(|error| error.field.as_str()), Some("pipeline.relay.batch"));
    }

    #[test]
    fn masking_keeps_everything_but_the_password() {
        assert_eq!(
            mask_password("postgres://u:p@h:5432/d?sslmode=require"),
            "postgres://u:****@h:5432/d?sslmode=require"
        );
        assert_eq!(mask_password("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(mask_password("postgres://u:p@ss@h/d"), "postgres://u:****@h/d");
    }
}
