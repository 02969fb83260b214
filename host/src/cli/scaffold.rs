//! `jobhost plugin new NAME`: a plugin crate that builds with plain
//! `cargo build --release --target wasm32-wasip2`, written against the SDK
//! (`plugins/jobhost-plugin` of this checkout).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use jobhost::plugins::valid_type_name;

/// The SDK of the checkout this binary was built from.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/jobhost-plugin")
}

/// Writes the crate `dir/NAME`; returns its path.
pub fn new_plugin(name: &str, dir: &Path, sdk: &Path) -> anyhow::Result<PathBuf> {
    if !valid_type_name(name) {
        bail!(
            "{name:?} is not a job type name (1-64 of a-z, 0-9, _ and -, starting with a letter)"
        );
    }
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "the plugin SDK is not at {} (pass --sdk PATH/plugins/jobhost-plugin of a jobhost checkout)",
            sdk.display()
        )
    })?;
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let lib = name.replace('-', "_");
    let files = [
        ("Cargo.toml", cargo_toml(name, &lib, &sdk)),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        (
            &format!("{name}.toml") as &str,
            MANIFEST.replace("{name}", name),
        ),
        (".gitignore", "/target\n".to_owned()),
    ];
    std::fs::create_dir_all(root.join("src"))
        .with_context(|| format!("creating {}", root.display()))?;
    for (file, text) in files {
        let path = root.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(root)
}

fn cargo_toml(name: &str, lib: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A jobhost plugin: built with `cargo build --release --target wasm32-wasip2`,
# the file target/wasm32-wasip2/release/{lib}.wasm is the plugin.
[lib]
name = "{lib}"
crate-type = ["cdylib"]

[dependencies]
jobhost-plugin = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true

# Its own workspace, wherever it is created.
[workspace]
"#,
        sdk = sdk.display()
    )
}

const LIB_RS: &str = r#"//! `{name}`: a jobhost job handler.
//!
//! Payload: `{"name": "Ada"}`. Result: `{"greeting": "Hello, Ada!"}`.

use jobhost_plugin::{Failure, Job, fatal};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Payload {
    name: String,
}

#[derive(Serialize)]
struct Greeting {
    greeting: String,
}

struct Plugin;

impl jobhost_plugin::Handler for Plugin {
    type Payload = Payload;
    type Output = Greeting;

    fn handle(job: Job<Payload>) -> Result<Greeting, Failure> {
        if job.payload.name.is_empty() {
            return Err(fatal("name is empty"));
        }
        Ok(Greeting {
            greeting: format!("Hello, {}!", job.payload.name),
        })
    }
}

jobhost_plugin::export!(Plugin);
"#;

const MANIFEST: &str = r#"# Manifest of the {name} plugin. Every field is optional; these are the
# defaults unless said otherwise. See the README, "Plugin manifest".
# job_types = ["{name}"]  # the job types it handles (job.job_type tells them apart)
fuel = 1_000_000_000      # wasm fuel per attempt
timeout_ms = 30_000       # wall-clock deadline per attempt
memory_mb = 64            # linear memory cap per attempt
max_attempts = 5          # attempts before the dead-letter queue
concurrency = 16          # attempts of each type in flight per host
# rate_per_second = 50    # attempts of each type started per second per host (default: no limit)
# Where outbound HTTP (wasi:http) may go; none when empty.
allowed_outbound_hosts = []

[backoff]
base_ms = 1_000           # delay after the first failed attempt
cap_ms = 60_000           # the delay never grows past this
jitter = 0.2              # ±20%

[config]                  # what the plugin reads with config::get
# api_url = "https://api.example.com"
# api_key = { env = "JOBHOST_PLUGIN_API_KEY" }   # from the host's environment
"#;
