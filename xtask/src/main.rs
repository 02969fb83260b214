//! `cargo xtask <command>`: the project's developer commands.
//!
//! - `plugins`: builds every plugin for wasm32-wasip2 (adding the target if it
//!   is missing) and lays them out under `target/jobhost-plugins/`.
//! - `run [--release] [-- <serve flags>]`: builds the plugins and starts
//!   `jobhost serve` with the example plugins on the embedded store (`./data`),
//!   and a development mail sink for `email_welcome` on 127.0.0.1:8025.
//! - `test [-- <cargo test args>]`: builds everything and runs the whole test suite.
//! - `bench [<scenario>] [--quick] [flags]`: builds in release mode and runs
//!   the benchmark suite against the real binary (`jobhost-bench --help`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod mail_sink;

const WASM_TARGET: &str = "wasm32-wasip2";
/// Example plugins served by `cargo xtask run`.
const EXAMPLES: &[&str] = &["email_welcome", "noop"];
/// Plugins only the test suite loads.
const TEST_PLUGINS: &[&str] = &["testing"];
/// Python plugins (built with componentize-py), under `python/`.
const PYTHON_PLUGINS: &[&str] = &["py_counter"];
/// The componentize-py the Python plugins are built with (from PyPI, into
/// `target/pyenv`).
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("plugins") => plugins().map(|_| ()),
        Some("run") => run(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <plugins | run [--release] [-- serve flags] | test [-- cargo test args]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_owned()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn status(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn ensure_wasm_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context(
            "running rustup (jobhost's plugins need rustup to add the wasm32-wasip2 target)",
        )?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the {WASM_TARGET} target");
    status(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// Builds the plugins and returns `target/jobhost-plugins`, which holds
/// `examples/` (each example's .wasm and manifest) and `testing/`.
fn plugins() -> Result<PathBuf> {
    ensure_wasm_target()?;
    let root = root();
    let plugins = root.join("plugins");
    let target_dir = root.join("target").join("plugins");
    status(
        cargo()
            .current_dir(&plugins)
            .args([
                "build",
                "--release",
                "--target",
                WASM_TARGET,
                "--target-dir",
            ])
            .arg(&target_dir),
    )?;
    let built = target_dir.join(WASM_TARGET).join("release");
    let out = root.join("target").join("jobhost-plugins");
    for (group, names) in [("examples", EXAMPLES), ("testing", TEST_PLUGINS)] {
        let dir = out.join(group);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for name in names {
            let wasm = built.join(format!("{name}.wasm"));
            std::fs::copy(&wasm, dir.join(format!("{name}.wasm")))
                .with_context(|| format!("copying {}", wasm.display()))?;
            let manifest = plugins.join(name).join(format!("{name}.toml"));
            if manifest.exists() {
                std::fs::copy(&manifest, dir.join(format!("{name}.toml")))
                    .with_context(|| format!("copying {}", manifest.display()))?;
            }
        }
    }
    python_plugins(&root, &out.join("python"))?;
    Ok(out)
}

/// Builds the Python plugins with componentize-py, installed from PyPI into
/// a virtualenv under `target/` the first time. A plugin is rebuilt only
/// when its source or the WIT changed. Without python3 (and its venv
/// module) they are left out, loudly: nothing else needs them, and
/// `cargo xtask test` then skips their test and says so; in CI that is an
/// error (`.ci/run` installs python3-venv).
fn python_plugins(root: &Path, out: &Path) -> Result<()> {
    let venv = root.join("target").join("pyenv");
    let tool = venv.join("bin").join("componentize-py");
    let has_python = || {
        Command::new("python3")
            .args(["-c", "import venv, ensurepip"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !tool.exists() && !has_python() {
        if std::env::var_os("CI").is_some() {
            bail!(
                "the Python example plugin needs python3 with venv; CI must install it (see .ci/run)"
            );
        }
        eprintln!(
            "xtask: WARNING: no python3 with venv (Debian: apt-get install python3-venv): \
             the Python example plugin is NOT built"
        );
        return Ok(());
    }
    if !tool.exists() {
        eprintln!(
            "xtask: installing {COMPONENTIZE_PY} into {}",
            venv.display()
        );
        status(Command::new("python3").args(["-m", "venv"]).arg(&venv)).context(
            "the Python plugins need python3 with venv (Debian: apt-get install python3-venv)",
        )?;
        status(Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--quiet",
            COMPONENTIZE_PY,
        ]))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let wit = root.join("wit").join("jobhost.wit");
    for name in PYTHON_PLUGINS {
        let src = root.join("plugins").join(name);
        let wasm = out.join(format!("{name}.wasm"));
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let newest_input = [src.join("app.py"), wit.clone()]
            .iter()
            .filter_map(|p| modified(p))
            .max();
        if modified(&wasm).is_none_or(|built| newest_input.is_some_and(|i| i > built)) {
            status(
                Command::new(&tool)
                    .arg("-d")
                    .arg(root.join("wit"))
                    .args(["-w", "handler", "componentize", "app", "-p"])
                    .arg(&src)
                    .arg("-o")
                    .arg(&wasm),
            )?;
        }
        let manifest = src.join(format!("{name}.toml"));
        std::fs::copy(&manifest, out.join(format!("{name}.toml")))
            .with_context(|| format!("copying {}", manifest.display()))?;
    }
    Ok(())
}

/// The PostgreSQL server the scale-out suite uses unless told otherwise:
/// the one every developer machine and CI runs (trust auth). Each test
/// creates a database of its own there and drops it.
const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Likewise Redis; each test keeps to a key prefix of its own.
const DEFAULT_TEST_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Whether something accepts TCP connections at the URL's host and port.
fn reachable(url: &str, default_port: u16) -> Result<()> {
    use std::net::{TcpStream, ToSocketAddrs};
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    let addr = host_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {host_port}"))?
        .next()
        .with_context(|| format!("{host_port} resolves to no address"))?;
    TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    let (ours, serve_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let release = ours.iter().any(|a| a == "--release");
    if let Some(other) = ours.iter().find(|a| *a != "--release") {
        bail!("unknown flag {other:?} for `cargo xtask run` (flags for jobhost go after `--`)");
    }
    let plugins = plugins()?.join("examples");
    // jobhost prints a token only when it generates one; remind the developer.
    let token_file = root().join("data").join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&token_file) {
        eprintln!(
            "xtask: admin token (from {}): {}",
            token_file.display(),
            token.trim()
        );
    }
    mail_sink::start(true);
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["run", "--package", "jobhost"]);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--", "serve", "--plugins"])
        .arg(&plugins)
        .args(serve_args);
    status(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    let plugins = plugins()?;
    let root = root();
    // The end-to-end tests start the real binary: build it first.
    status(
        cargo()
            .current_dir(&root)
            .args(["build", "--package", "jobhost", "--bin", "jobhost"]),
    )?;
    let extra: Vec<String> = match args.first().map(String::as_str) {
        Some("--") => args[1..].to_vec(),
        _ => args.to_vec(),
    };
    // The scale-out suite runs against a real PostgreSQL server and a real
    // Redis. In CI a server that cannot be reached fails the run; elsewhere
    // the tests that need it (each has "postgres" or "redis" in its name)
    // are left out, loudly.
    let database_url = std::env::var("JOBHOST_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
    let redis_url = std::env::var("JOBHOST_TEST_REDIS_URL")
        .unwrap_or_else(|_| DEFAULT_TEST_REDIS_URL.to_owned());
    let mut skipped = Vec::new();
    for (service, url, default_port, filter) in [
        ("PostgreSQL", &database_url, 5432, "postgres"),
        ("Redis", &redis_url, 6379, "redis"),
    ] {
        let Err(why) = reachable(url, default_port) else {
            continue;
        };
        if std::env::var_os("CI").is_some() {
            bail!(
                "the scale-out suite needs {service} at {url} ({why:#}); \
                 CI must start it (see .ci/run)"
            );
        }
        eprintln!(
            "xtask: WARNING: {service} at {url} is unreachable ({why:#}): \
             the tests named *{filter}* are NOT run"
        );
        skipped.push((format!("the tests that need {service} ({url})"), filter));
    }
    // The Python plugin is left out of the build without python3 (never in
    // CI): then so is its test.
    if !plugins.join("python").join("py_counter.wasm").exists() {
        skipped.push((
            "the Python plugin's test (no python3 with venv to build it)".to_owned(),
            "python",
        ));
    }
    // The dashboard's browser test drives headless Chromium through
    // chromedriver: without it (never in CI), that test is left out.
    if !on_path("chromedriver") {
        if std::env::var_os("CI").is_some() {
            bail!(
                "the dashboard's browser test needs chromedriver; CI must install it (see .ci/run)"
            );
        }
        eprintln!(
            "xtask: WARNING: no chromedriver (Debian: apt-get install chromium chromium-driver): \
             the tests named *browser* are NOT run"
        );
        skipped.push((
            "the dashboard's browser test (no chromedriver)".to_owned(),
            "browser",
        ));
    }
    let mut test_args = extra;
    if !skipped.is_empty() && !test_args.iter().any(|a| a == "--") {
        test_args.push("--".into());
    }
    for (_, filter) in &skipped {
        test_args.extend(["--skip".into(), (*filter).into()]);
    }
    let mut cmd = cargo();
    cmd.current_dir(&root)
        .args(["test", "--workspace"])
        .args(&test_args)
        .env("JOBHOST_TEST_PLUGINS", &plugins)
        .env("JOBHOST_TEST_DATABASE_URL", &database_url)
        .env("JOBHOST_TEST_REDIS_URL", &redis_url)
        .env(
            "JOBHOST_BIN",
            root.join("target").join("debug").join("jobhost"),
        );
    let (passed, failed) = run_counting_tests(&mut cmd)?;
    // One closing line for the whole suite, after cargo's per-binary ones.
    println!("summary: {passed} passed, {failed} failed");
    for (what, _) in skipped {
        println!("summary: NOT RUN: {what}");
    }
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    Ok(())
}

/// Whether `program` is an executable file in one of the `PATH` directories.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// Runs `cargo test`, passing its output through, and adds up the
/// "test result:" lines of every test binary.
fn run_counting_tests(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("{cmd:?} failed: {status}");
    }
    Ok((passed, failed))
}

/// The number just before `word` in a cargo "test result" line
/// (`ok. 48 passed; 0 failed; ...`).
fn count_before(line: &str, word: &str) -> u64 {
    line.split(';')
        .map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
        })
        .find_map(|part| part.strip_suffix(word))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn bench(args: &[String]) -> Result<()> {
    let plugins = plugins()?.join("examples");
    let root = root();
    status(cargo().current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "jobhost",
        "--package",
        "jobhost-bench",
    ]))?;
    let release = root.join("target").join("release");
    // The seed scenario's email_welcome jobs post their mails here.
    mail_sink::start(false);
    let mut args = args.to_vec();
    if !args.iter().any(|a| !a.starts_with('-')) {
        args.insert(0, "all".into());
    }
    status(
        Command::new(release.join("jobhost-bench"))
            .current_dir(&root)
            .args(&args)
            .env("JOBHOST_BIN", release.join("jobhost"))
            .env("JOBHOST_BENCH_PLUGINS", &plugins),
    )
}
