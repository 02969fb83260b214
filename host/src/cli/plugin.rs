//! `jobhost plugin check FILE.wasm`: says whether a file is a plugin jobhost
//! can run, and what it imports, without starting a server. `jobhost plugin
//! new NAME`: a new plugin crate (see [`super::scaffold`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use jobhost::plugins::{Manifest, valid_type_name};
use jobhost::runtime::{Runtime, RuntimeConfig};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Creates a plugin crate NAME/ (NAME is its job type) with a handler,
    /// a manifest and the SDK as its dependency. Build it with
    /// `cargo build --release --target wasm32-wasip2`.
    New {
        /// The job type the plugin handles.
        name: String,
        /// Where to create the crate.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The SDK crate (plugins/jobhost-plugin of a jobhost checkout);
        /// by default the one this binary was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Checks that FILE is a component of the jobhost:plugin/handler world
    /// that this host can run, and that its manifest (NAME.toml beside it,
    /// or --manifest) is valid. Prints its digest, imports and exports.
    /// Exits 0 if it can be installed, 1 if not.
    Check {
        /// The plugin, `NAME.wasm` (NAME is its job type).
        file: PathBuf,
        /// Its manifest, if not `NAME.toml` beside it.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { name, dir, sdk } => {
            let sdk = sdk.unwrap_or_else(super::scaffold::default_sdk);
            let root = super::scaffold::new_plugin(&name, &dir, &sdk)?;
            let lib = name.replace('-', "_");
            println!("created {}\n", root.display());
            println!("next:");
            println!("  cd {}", root.display());
            println!("  cargo build --release --target wasm32-wasip2");
            println!(
                "  cp target/wasm32-wasip2/release/{lib}.wasm PLUGINS_DIR/{name}.wasm && cp {name}.toml PLUGINS_DIR/"
            );
            println!("  curl -X POST localhost:8080/jobs/{name} -d '{{\"name\":\"Ada\"}}'");
            Ok(())
        }
        PluginCommand::Check {
            file,
            manifest,
            json,
        } => {
            let ok = check(&file, manifest.as_deref(), json)?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Prints what `file` is; true if jobhost can install it.
fn check(file: &Path, manifest: Option<&Path>, as_json: bool) -> anyhow::Result<bool> {
    let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let mut problems = Vec::new();
    if !valid_type_name(&name) {
        problems.push(format!(
            "{name:?} is not a job type name (1-64 of a-z, 0-9, _ and -, starting with a letter): rename the file"
        ));
    }

    let manifest_path = manifest
        .map(Path::to_owned)
        .unwrap_or_else(|| file.with_extension("toml"));
    let manifest_text = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && manifest.is_none() => None,
        Err(e) => anyhow::bail!("reading {}: {e}", manifest_path.display()),
    };
    let parsed = match &manifest_text {
        Some(text) => match Manifest::parse(text) {
            Ok(m) => Some(m),
            Err(e) => {
                problems.push(format!("manifest {}: {e}", manifest_path.display()));
                None
            }
        },
        None => Some(Manifest::default()),
    };

    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 1,
        max_memory_bytes: 64 << 20,
        cache_dir: None,
    })?;
    let inspection = runtime.inspect(&name, &wasm);
    let (imports, exports, digest) = match &inspection {
        Ok(i) => {
            if let Err(e) = &i.linked {
                problems.push(e.to_string());
            }
            (i.imports.clone(), i.exports.clone(), i.digest.clone())
        }
        Err(e) => {
            problems.push(e.to_string());
            (Vec::new(), Vec::new(), jobhost::runtime::digest_of(&wasm))
        }
    };
    let ok = problems.is_empty();
    let job_types = parsed
        .as_ref()
        .and_then(|m| m.job_types.clone())
        .unwrap_or_else(|| vec![name.clone()]);

    if as_json {
        let manifest = parsed.as_ref().map(|m| {
            json!({
                "path": manifest_text.as_ref().map(|_| manifest_path.display().to_string()),
                "fuel": m.limits.fuel,
                "timeoutMs": m.limits.timeout.as_millis() as u64,
                "memoryMb": m.limits.memory_bytes >> 20,
                "maxAttempts": m.max_attempts,
                "concurrency": m.concurrency,
                "allowedOutboundHosts": hosts(m),
                // Keys only: values may be secrets from the environment.
                "configKeys": m.grants.config.keys().collect::<Vec<_>>(),
            })
        });
        let out = json!({
            "file": file.display().to_string(),
            "name": name,
            "type": name,
            "jobTypes": job_types,
            "valid": ok,
            "problems": problems,
            "digest": digest,
            "sizeBytes": wasm.len(),
            "imports": imports,
            "exports": exports,
            "manifest": manifest,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ok);
    }

    if ok {
        let types: Vec<String> = job_types.iter().map(|t| format!("{t:?}")).collect();
        let types = types.join(", ");
        match job_types.len() {
            1 => println!("{}: a jobhost plugin for job type {types}", file.display()),
            _ => println!("{}: a jobhost plugin for job types {types}", file.display()),
        }
    } else {
        println!("{}: NOT a plugin jobhost can run", file.display());
        for p in &problems {
            println!("  problem  {p}");
        }
    }
    println!("  digest   {digest}");
    println!("  size     {} bytes", wasm.len());
    println!("  imports  {}", list(&imports));
    println!("  exports  {}", list(&exports));
    if let Some(m) = &parsed {
        println!(
            "  manifest {}: fuel {}, timeout {} ms, memory {} MiB, max_attempts {}, concurrency {}",
            if manifest_text.is_some() {
                manifest_path.display().to_string()
            } else {
                "none (defaults)".to_owned()
            },
            m.limits.fuel,
            m.limits.timeout.as_millis(),
            m.limits.memory_bytes >> 20,
            m.max_attempts,
            m.concurrency
        );
        println!("  outbound {}", list(&hosts(m)));
        let keys: Vec<String> = m.grants.config.keys().cloned().collect();
        println!("  config   {}", list(&keys));
    }
    Ok(ok)
}

/// The manifest's `allowed_outbound_hosts`, as written.
fn hosts(m: &Manifest) -> Vec<String> {
    m.grants.outbound.iter().map(ToString::to_string).collect()
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}
