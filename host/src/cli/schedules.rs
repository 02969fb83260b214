//! `jobhost schedules`: a running host's schedules (cron), over the admin API.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Connection, block_on, encode, text};

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule, with its next and last tick.
    List {
        #[command(flatten)]
        conn: Connection,
    },
    /// Creates or replaces a schedule: one job of TYPE at every tick.
    Put {
        /// 1 to 64 of a-z, 0-9, _ and -, starting with a letter.
        name: String,
        /// The job type.
        #[arg(long = "type")]
        job_type: String,
        /// Five fields (minute hour day month weekday), six with seconds
        /// first, or @hourly, @daily, ...
        #[arg(long)]
        cron: String,
        /// An IANA time zone name.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// The jobs' payload, a JSON document.
        #[arg(long, default_value = "{}")]
        payload: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Stops a schedule (the jobs it made stay).
    Delete {
        name: String,
        #[command(flatten)]
        conn: Connection,
    },
}

pub fn run(command: SchedulesCommand) -> anyhow::Result<()> {
    match command {
        SchedulesCommand::List { conn } => {
            let answer = block_on(conn.send(reqwest::Method::GET, "/admin/schedules", None, None))?;
            if let Some(body) = conn.accept(answer)? {
                let schedules = body["schedules"].as_array().cloned().unwrap_or_default();
                println!(
                    "{:<24} {:<20} {:<18} {:<16} {:<27}  LAST JOB",
                    "NAME", "TYPE", "CRON", "TIMEZONE", "NEXT RUN"
                );
                for s in &schedules {
                    println!(
                        "{:<24} {:<20} {:<18} {:<16} {:<27}  {}",
                        text(&s["name"]),
                        text(&s["type"]),
                        text(&s["cron"]),
                        text(&s["timezone"]),
                        text(&s["nextRunAt"]),
                        text(&s["lastJobId"]),
                    );
                }
                eprintln!("{} schedules", schedules.len());
            }
            Ok(())
        }
        SchedulesCommand::Put {
            name,
            job_type,
            cron,
            timezone,
            payload,
            conn,
        } => {
            let payload: Value =
                serde_json::from_str(&payload).context("--payload must be a JSON document")?;
            let body =
                json!({"type": job_type, "cron": cron, "timezone": timezone, "payload": payload});
            let path = format!("/admin/schedules/{}", encode(&name));
            let answer =
                block_on(conn.send(reqwest::Method::PUT, &path, Some(body.to_string()), None))?;
            let created = answer.status == 201;
            if let Some(s) = conn.accept(answer)? {
                println!(
                    "schedule {} {}: {} ({}), next run {}",
                    text(&s["name"]),
                    if created { "created" } else { "replaced" },
                    text(&s["cron"]),
                    text(&s["timezone"]),
                    text(&s["nextRunAt"]),
                );
            }
            Ok(())
        }
        SchedulesCommand::Delete { name, conn } => {
            let path = format!("/admin/schedules/{}", encode(&name));
            let answer = block_on(conn.send(reqwest::Method::DELETE, &path, None, None))?;
            if conn.accept(answer)?.is_some() {
                println!("schedule {name} deleted");
            }
            Ok(())
        }
    }
}
