//! The plugin manifest (`NAME.toml` beside `NAME.wasm`): the limits and retry
//! policy of the plugin's jobs. Every field is optional; unknown fields are an
//! error, so a typo never silently falls back to a default.
//!
//! ```toml
//! job_types = ["email_welcome", "email_digest"]   # the types it handles (default: its own name)
//! fuel = 1_000_000_000      # wasm fuel per attempt
//! timeout_ms = 30_000       # wall-clock deadline per attempt
//! memory_mb = 64            # linear memory cap per attempt
//! max_attempts = 5          # attempts before the dead-letter queue
//! concurrency = 16          # attempts of each of its types in flight per host
//! rate_per_second = 50      # attempts of each of its types started per second per host (default: no limit)
//! # where wasi:http requests may go; none when empty (the default)
//! allowed_outbound_hosts = ["https://api.mail.example.com", "http://127.0.0.1:8025"]
//!
//! [backoff]
//! base_ms = 1_000           # delay after the first failed attempt
//! cap_ms = 60_000           # the delay never grows past this (before jitter)
//! jitter = 0.2              # ±20%
//!
//! [config]                  # what the plugin reads with `config.get`
//! mail_api_url = "https://mail.example.com/v1/send"
//! api_key = { env = "JOBHOST_PLUGIN_MAIL_API_KEY" }   # from the host's environment, at load
//!
//! [[schedules]]             # periodic jobs (cron), as `PUT /admin/schedules/{name}` makes
//! name = "weekly-digest"
//! cron = "0 9 * * MON"      # five fields, six with seconds first, or @daily and the like
//! timezone = "Europe/Paris" # default UTC
//! job_type = "email_digest" # one of job_types (default: the first)
//! payload = { full = true } # sent as JSON (default {})
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::backoff::Backoff;
use crate::runtime::{Grants, HostPattern, Limits};

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The job types the plugin handles (`None`: the one named like it).
    pub job_types: Option<Vec<String>>,
    pub limits: Limits,
    pub max_attempts: u32,
    pub concurrency: u32,
    /// Attempts started per second per host (`None`: no limit).
    pub rate_per_second: Option<f64>,
    pub backoff: Backoff,
    /// What the plugin's attempts may use: its config, resolved.
    pub grants: Arc<Grants>,
    /// Periodic jobs the plugin brings (`[[schedules]]`).
    pub schedules: Vec<ManifestSchedule>,
}

/// A `[[schedules]]` entry, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestSchedule {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    /// `None`: the plugin's first type (its own name without `job_types`).
    pub job_type: Option<String>,
    /// JSON text.
    pub payload: String,
}

/// The most `[[schedules]]` one manifest may have.
pub const MAX_MANIFEST_SCHEDULES: usize = 64;

/// The only environment variables a manifest may read: a manifest (which
/// an admin can upload) must not be a way to read the host's own secrets.
pub const ENV_PREFIX: &str = "JOBHOST_PLUGIN_";

/// Longest config key.
pub const MAX_CONFIG_KEY: usize = 128;
/// Largest config value, in bytes.
pub const MAX_CONFIG_VALUE: usize = 64 * 1024;

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            job_types: None,
            limits: Limits {
                fuel: 1_000_000_000,
                timeout: Duration::from_secs(30),
                memory_bytes: 64 << 20,
            },
            max_attempts: 5,
            concurrency: 16,
            rate_per_second: None,
            backoff: Backoff::default(),
            grants: Arc::default(),
            schedules: Vec::new(),
        }
    }
}

/// The largest memory cap a manifest may ask for.
pub const MAX_MEMORY_MB: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{0}")]
    Parse(String),
    #[error("`{field}` {problem}")]
    Invalid { field: String, problem: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    job_types: Option<Vec<String>>,
    fuel: Option<u64>,
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    max_attempts: Option<u32>,
    concurrency: Option<u32>,
    rate_per_second: Option<f64>,
    backoff: Option<RawBackoff>,
    config: Option<BTreeMap<String, toml::Value>>,
    allowed_outbound_hosts: Option<Vec<String>>,
    schedules: Option<Vec<RawSchedule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: String,
    cron: String,
    timezone: Option<String>,
    job_type: Option<String>,
    payload: Option<toml::Value>,
}

/// The most job types one plugin may handle.
pub const MAX_JOB_TYPES: usize = 64;

/// The most entries `allowed_outbound_hosts` may have.
pub const MAX_OUTBOUND_HOSTS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    base_ms: Option<u64>,
    cap_ms: Option<u64>,
    jitter: Option<f64>,
}

fn check<T: PartialOrd + std::fmt::Display + Copy>(
    field: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ManifestError> {
    if value < min || value > max {
        return Err(ManifestError::Invalid {
            field: field.to_owned(),
            problem: format!("is {value}; it must be between {min} and {max}"),
        });
    }
    Ok(value)
}

impl Manifest {
    /// Parses a manifest, reading `{ env = "VAR" }` config values from this
    /// process's environment.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Self::parse_with_env(text, |var| std::env::var(var).ok())
    }

    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Manifest, ManifestError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        let mut m = Manifest::default();
        if let Some(types) = raw.job_types {
            m.job_types = Some(job_types(types)?);
        }
        if let Some(v) = raw.fuel {
            m.limits.fuel = check("fuel", v, 1_000, u64::MAX / 2)?;
        }
        if let Some(v) = raw.timeout_ms {
            m.limits.timeout = Duration::from_millis(check("timeout_ms", v, 1, 24 * 3600 * 1000)?);
        }
        if let Some(v) = raw.memory_mb {
            m.limits.memory_bytes = (check("memory_mb", v, 1, MAX_MEMORY_MB)? as usize) << 20;
        }
        if let Some(v) = raw.max_attempts {
            m.max_attempts = check("max_attempts", v, 1, 1_000)?;
        }
        if let Some(v) = raw.concurrency {
            m.concurrency = check("concurrency", v, 1, 10_000)?;
        }
        if let Some(v) = raw.rate_per_second {
            m.rate_per_second = Some(check("rate_per_second", v, 0.01, 1_000_000.0)?);
        }
        if let Some(b) = raw.backoff {
            if let Some(v) = b.base_ms {
                m.backoff.base = Duration::from_millis(check("backoff.base_ms", v, 0, 86_400_000)?);
            }
            if let Some(v) = b.cap_ms {
                m.backoff.cap = Duration::from_millis(check("backoff.cap_ms", v, 0, 86_400_000)?);
            }
            if let Some(v) = b.jitter {
                m.backoff.jitter = check("backoff.jitter", v, 0.0, 1.0)?;
            }
            if m.backoff.cap < m.backoff.base {
                return Err(ManifestError::Invalid {
                    field: "backoff.cap_ms".to_owned(),
                    problem: format!(
                        "({} ms) is below backoff.base_ms ({} ms)",
                        m.backoff.cap.as_millis(),
                        m.backoff.base.as_millis()
                    ),
                });
            }
        }
        let mut grants = Grants::default();
        if let Some(config) = raw.config {
            grants.config = resolve_config(config, env)?;
        }
        if let Some(hosts) = raw.allowed_outbound_hosts {
            if hosts.len() > MAX_OUTBOUND_HOSTS {
                return Err(ManifestError::Invalid {
                    field: "allowed_outbound_hosts".to_owned(),
                    problem: format!("has {} entries; at most {MAX_OUTBOUND_HOSTS}", hosts.len()),
                });
            }
            for (i, text) in hosts.iter().enumerate() {
                let pattern =
                    HostPattern::parse(text).map_err(|problem| ManifestError::Invalid {
                        field: format!("allowed_outbound_hosts[{i}]"),
                        problem: format!("({text:?}) {problem}"),
                    })?;
                grants.outbound.push(pattern);
            }
        }
        m.grants = Arc::new(grants);
        if let Some(schedules) = raw.schedules {
            m.schedules = manifest_schedules(schedules, m.job_types.as_deref())?;
        }
        Ok(m)
    }
}

/// Checks `[[schedules]]`: valid, distinct names; patterns and time zones
/// that parse; types the plugin handles.
fn manifest_schedules(
    raw: Vec<RawSchedule>,
    job_types: Option<&[String]>,
) -> Result<Vec<ManifestSchedule>, ManifestError> {
    let invalid = |i: usize, field: &str, problem: String| ManifestError::Invalid {
        field: format!("schedules[{i}].{field}"),
        problem,
    };
    if raw.len() > MAX_MANIFEST_SCHEDULES {
        return Err(ManifestError::Invalid {
            field: "schedules".to_owned(),
            problem: format!(
                "has {} entries; at most {MAX_MANIFEST_SCHEDULES}",
                raw.len()
            ),
        });
    }
    let mut out: Vec<ManifestSchedule> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        if !super::valid_type_name(&r.name) {
            return Err(invalid(
                i,
                "name",
                format!(
                    "({:?}) is not a schedule name (1-64 of a-z, 0-9, _ and -, starting with a letter)",
                    r.name
                ),
            ));
        }
        if out.iter().any(|s| s.name == r.name) {
            return Err(invalid(i, "name", format!("({:?}) is used twice", r.name)));
        }
        let timezone = r.timezone.unwrap_or_else(|| "UTC".to_owned());
        let cadence = crate::schedules::Cadence::parse(&r.cron, &timezone)
            .map_err(|problem| invalid(i, "cron", problem))?;
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        if cadence.next_after(now).is_none() {
            return Err(invalid(
                i,
                "cron",
                format!("({:?}) has no tick from now on", r.cron),
            ));
        }
        if let Some(t) = &r.job_type {
            match job_types {
                Some(types) if types.contains(t) => {}
                Some(_) => {
                    return Err(invalid(
                        i,
                        "job_type",
                        format!("({t:?}) is not one of job_types"),
                    ));
                }
                None => {
                    return Err(invalid(
                        i,
                        "job_type",
                        "is only for a plugin with job_types; without them it handles its own name"
                            .to_owned(),
                    ));
                }
            }
        }
        let payload = match r.payload {
            None => "{}".to_owned(),
            Some(value) => serde_json::to_string(&value)
                .map_err(|e| invalid(i, "payload", format!("cannot be sent as JSON: {e}")))?,
        };
        out.push(ManifestSchedule {
            name: r.name,
            cron: r.cron.trim().to_owned(),
            timezone,
            job_type: r.job_type,
            payload,
        });
    }
    Ok(out)
}

/// Checks `job_types`: 1 to [`MAX_JOB_TYPES`] valid names, none twice.
fn job_types(types: Vec<String>) -> Result<Vec<String>, ManifestError> {
    let invalid = |field: String, problem: String| ManifestError::Invalid { field, problem };
    if types.is_empty() || types.len() > MAX_JOB_TYPES {
        return Err(invalid(
            "job_types".into(),
            format!(
                "has {} entries; it names 1 to {MAX_JOB_TYPES} job types",
                types.len()
            ),
        ));
    }
    for (i, name) in types.iter().enumerate() {
        if !super::valid_type_name(name) {
            return Err(invalid(
                format!("job_types[{i}]"),
                format!(
                    "({name:?}) is not a valid job type name (1-64 of a-z, 0-9, _ and -, starting with a letter)"
                ),
            ));
        }
        if types[..i].contains(name) {
            return Err(invalid(
                format!("job_types[{i}]"),
                format!("({name:?}) is listed twice"),
            ));
        }
    }
    Ok(types)
}

/// Checks the `[config]` keys and values, reading environment references.
fn resolve_config(
    raw: BTreeMap<String, toml::Value>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ManifestError> {
    let mut config = BTreeMap::new();
    for (key, value) in raw {
        let field = format!("config.{key}");
        let key_ok = !key.is_empty()
            && key.len() <= MAX_CONFIG_KEY
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !key_ok {
            return Err(ManifestError::Invalid {
                field,
                problem: format!(
                    "is not a valid config key (1-{MAX_CONFIG_KEY} of A-Z, a-z, 0-9, _, - and .)"
                ),
            });
        }
        let value = match value {
            toml::Value::String(text) => text,
            toml::Value::Table(t) if t.len() == 1 && t.get("env").is_some_and(|v| v.is_str()) => {
                let var = t["env"].as_str().unwrap_or_default();
                if !var.starts_with(ENV_PREFIX) {
                    return Err(ManifestError::Invalid {
                        field,
                        problem: format!(
                            "names environment variable {var:?}; a manifest may read only variables named {ENV_PREFIX}*"
                        ),
                    });
                }
                env(var).ok_or_else(|| ManifestError::Invalid {
                    field: field.clone(),
                    problem: format!("names environment variable {var}, which is not set"),
                })?
            }
            other => {
                return Err(ManifestError::Invalid {
                    field,
                    problem: format!(
                        "must be a string or {{ env = \"VAR\" }}, not {}",
                        other.type_str()
                    ),
                });
            }
        };
        if value.len() > MAX_CONFIG_VALUE {
            return Err(ManifestError::Invalid {
                field,
                problem: format!("is {} bytes; at most {MAX_CONFIG_VALUE}", value.len()),
            });
        }
        config.insert(key, value);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_manifest_is_the_defaults() {
        assert_eq!(Manifest::parse("").unwrap(), Manifest::default());
        assert_eq!(Manifest::default().max_attempts, 5);
        assert_eq!(Manifest::default().backoff, Backoff::default());
    }

    #[test]
    fn fields_override_defaults() {
        let m = Manifest::parse(
            "fuel = 5000\ntimeout_ms = 250\nmemory_mb = 8\nmax_attempts = 3\nconcurrency = 2\n\
             [backoff]\nbase_ms = 10\ncap_ms = 40\njitter = 0.0\n",
        )
        .unwrap();
        assert_eq!(m.limits.fuel, 5000);
        assert_eq!(m.limits.timeout, Duration::from_millis(250));
        assert_eq!(m.limits.memory_bytes, 8 << 20);
        assert_eq!((m.max_attempts, m.concurrency), (3, 2));
        assert_eq!(m.backoff.base, Duration::from_millis(10));
        assert_eq!(m.backoff.cap, Duration::from_millis(40));
        assert_eq!(m.backoff.jitter, 0.0);
    }

    #[test]
    fn errors_name_the_field() {
        let e = Manifest::parse("max_attempts = 0").unwrap_err().to_string();
        assert!(e.contains("max_attempts"), "{e}");
        let e = Manifest::parse("timout_ms = 5").unwrap_err().to_string();
        assert!(e.contains("timout_ms"), "{e}");
        let e = Manifest::parse("[backoff]\nbase_ms = 100\ncap_ms = 10")
            .unwrap_err()
            .to_string();
        assert!(e.contains("backoff.cap_ms"), "{e}");
        let e = Manifest::parse("rate_per_second = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rate_per_second") && e.contains("0.01"), "{e}");
        assert_eq!(
            Manifest::parse("rate_per_second = 2.5")
                .unwrap()
                .rate_per_second,
            Some(2.5)
        );
        let e = Manifest::parse("[backoff]\njitter = 1.5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("backoff.jitter"), "{e}");
    }

    #[test]
    fn schedules_are_checked_and_their_payload_is_json() {
        let m = Manifest::parse(
            "job_types = [\"a\", \"b\"]\n\
             [[schedules]]\nname = \"nightly\"\ncron = \"0 2 * * *\"\n\
             [[schedules]]\nname = \"weekly\"\ncron = \"0 9 * * MON\"\ntimezone = \"Europe/Paris\"\n\
             job_type = \"b\"\npayload = { full = true, n = 3 }\n",
        )
        .unwrap();
        assert_eq!(
            m.schedules,
            [
                ManifestSchedule {
                    name: "nightly".into(),
                    cron: "0 2 * * *".into(),
                    timezone: "UTC".into(),
                    job_type: None,
                    payload: "{}".into(),
                },
                ManifestSchedule {
                    name: "weekly".into(),
                    cron: "0 9 * * MON".into(),
                    timezone: "Europe/Paris".into(),
                    job_type: Some("b".into()),
                    payload: r#"{"full":true,"n":3}"#.into(),
                },
            ]
        );
        let entry =
            |extra: &str| format!("[[schedules]]\nname = \"s\"\ncron = \"0 2 * * *\"\n{extra}");
        for (text, says) in [
            (entry("timezone = \"Mars/Olympus\""), "schedules[0].cron"),
            (
                "[[schedules]]\nname = \"s\"\ncron = \"0 2 * *\"".to_owned(),
                "schedules[0].cron",
            ),
            (
                "[[schedules]]\nname = \"Bad\"\ncron = \"0 2 * * *\"".to_owned(),
                "schedules[0].name",
            ),
            (format!("{}\n{}", entry(""), entry("")), "schedules[1].name"),
            (entry("job_type = \"other\""), "schedules[0].job_type"),
            (entry("every = \"day\""), "every"),
        ] {
            let e = Manifest::parse(&text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    /// Every field, out of range or of the wrong kind: the error names it.
    #[test]
    fn every_field_has_its_own_error() {
        let cases = [
            ("job_types = [\"A\"]", "job_types[0]"),
            ("fuel = 10", "`fuel`"),
            ("fuel = \"lots\"", "fuel"),
            ("timeout_ms = 0", "`timeout_ms`"),
            ("timeout_ms = 86_400_001", "`timeout_ms`"),
            ("memory_mb = 0", "`memory_mb`"),
            ("memory_mb = 4097", "`memory_mb`"),
            ("max_attempts = 1001", "`max_attempts`"),
            ("concurrency = 0", "`concurrency`"),
            ("concurrency = 10_001", "`concurrency`"),
            ("rate_per_second = 2_000_000", "`rate_per_second`"),
            (
                "allowed_outbound_hosts = [\"ftp://x.test\"]",
                "allowed_outbound_hosts[0]",
            ),
            ("[backoff]\nbase_ms = 86_400_001", "`backoff.base_ms`"),
            ("[backoff]\ncap_ms = 86_400_001", "`backoff.cap_ms`"),
            ("[backoff]\njitter = -0.1", "`backoff.jitter`"),
            ("[backoff]\nfactor = 2", "factor"),
            ("[config]\nkey = 1", "config.key"),
        ];
        for (text, field) in cases {
            let e = Manifest::parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text:?}: {e}");
        }
    }

    #[test]
    fn job_types_are_checked_entry_by_entry() {
        assert_eq!(Manifest::default().job_types, None);
        let m = Manifest::parse("job_types = [\"email_welcome\", \"email_digest\"]").unwrap();
        assert_eq!(
            m.job_types,
            Some(vec!["email_welcome".to_owned(), "email_digest".to_owned()])
        );
        let err = |text: &str| Manifest::parse(text).unwrap_err().to_string();
        let e = err("job_types = []");
        assert!(e.contains("`job_types`") && e.contains("1 to 64"), "{e}");
        let e = err("job_types = [\"ok\", \"Not-Ok\"]");
        assert!(e.contains("job_types[1]") && e.contains("Not-Ok"), "{e}");
        let e = err("job_types = [\"a\", \"b\", \"a\"]");
        assert!(e.contains("job_types[2]") && e.contains("twice"), "{e}");
        let e = err("job_types = \"a\"");
        assert!(e.contains("job_types"), "{e}");
        let many: Vec<String> = (0..65).map(|i| format!("\"t{i}\"")).collect();
        let e = err(&format!("job_types = [{}]", many.join(",")));
        assert!(e.contains("has 65 entries"), "{e}");
    }

    #[test]
    fn config_takes_text_and_environment_references() {
        let env = |var: &str| (var == "JOBHOST_PLUGIN_MAIL_KEY").then(|| "s3cret".to_owned());
        let m = Manifest::parse_with_env(
            "[config]\nmail_api_url = \"http://mail/send\"\napi_key = { env = \"JOBHOST_PLUGIN_MAIL_KEY\" }\n",
            env,
        )
        .unwrap();
        assert_eq!(
            m.grants.config,
            [
                ("api_key".to_owned(), "s3cret".to_owned()),
                ("mail_api_url".to_owned(), "http://mail/send".to_owned()),
            ]
            .into()
        );
        assert!(Manifest::default().grants.config.is_empty());
    }

    #[test]
    fn config_errors_name_the_key() {
        let no_env = |_: &str| None;
        let err = |text: &str| {
            Manifest::parse_with_env(text, no_env)
                .unwrap_err()
                .to_string()
        };
        let e = err("[config]\napi_key = { env = \"JOBHOST_PLUGIN_MAIL_KEY\" }");
        assert!(
            e.contains("config.api_key")
                && e.contains("JOBHOST_PLUGIN_MAIL_KEY")
                && e.contains("not set"),
            "{e}"
        );
        // The host's own variables are out of reach, set or not.
        let e = Manifest::parse_with_env("[config]\ndb = { env = \"DATABASE_URL\" }", |_| {
            Some("postgres://secret".into())
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("config.db") && e.contains("JOBHOST_PLUGIN_*"),
            "{e}"
        );
        let e = err("[config]\nretries = 3");
        assert!(e.contains("config.retries") && e.contains("integer"), "{e}");
        let e = err("[config]\napi_key = { env = \"A\", default = \"x\" }");
        assert!(e.contains("config.api_key"), "{e}");
        let e = err("[config]\n\"bad key\" = \"x\"");
        assert!(e.contains("config.bad key"), "{e}");
        let big = "x".repeat(MAX_CONFIG_VALUE + 1);
        let e = err(&format!("[config]\nblob = \"{big}\""));
        assert!(e.contains("config.blob") && e.contains("65536"), "{e}");
    }

    #[test]
    fn allowed_outbound_hosts_are_checked_entry_by_entry() {
        let m = Manifest::parse(
            "allowed_outbound_hosts = [\"https://api.mail.test\", \"http://127.0.0.1:*\"]",
        )
        .unwrap();
        assert_eq!(m.grants.outbound.len(), 2);
        assert!(m.grants.outbound[1].allows("http", "127.0.0.1", 8025));
        assert!(Manifest::default().grants.outbound.is_empty());
        let e = Manifest::parse("allowed_outbound_hosts = [\"https://ok.test\", \"mail.test\"]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("allowed_outbound_hosts[1]") && e.contains("mail.test"),
            "{e}"
        );
        let e = Manifest::parse("allowed_outbound_hosts = \"https://one.test\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("allowed_outbound_hosts"), "{e}");
        let many: Vec<String> = (0..65).map(|i| format!("\"https://h{i}.test\"")).collect();
        let e = Manifest::parse(&format!("allowed_outbound_hosts = [{}]", many.join(",")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 64"), "{e}");
    }
}
