//! A development stand-in for a mail provider, for `cargo xtask run` and
//! `cargo xtask bench`: the example `email_welcome` manifest posts its mails
//! to `http://127.0.0.1:8025/send`, and this accepts each one (printing it,
//! for `run`) instead of sending it. Like real providers it honours `idempotency-key`: a key it
//! has seen gets the first answer again and prints nothing. Development
//! only: one thread, HTTP/1.1 with `Connection: close`, no TLS.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

pub const ADDR: &str = "127.0.0.1:8025";

/// Starts the sink in the background; says so (or why not) on stderr.
/// `print`: each new mail too.
pub fn start(print: bool) {
    let listener = match TcpListener::bind(ADDR) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "xtask: no development mail sink on {ADDR} ({e}); email_welcome jobs will retry until something answers there"
            );
            return;
        }
    };
    eprintln!(
        "xtask: development mail sink on http://{ADDR}/send takes the mails email_welcome sends"
    );
    std::thread::spawn(move || {
        let mut ids: HashMap<String, String> = HashMap::new();
        for stream in listener.incoming().flatten() {
            if let Err(e) = serve(stream, &mut ids, print) {
                eprintln!("xtask mail sink: {e}");
            }
        }
    });
}

fn serve(stream: TcpStream, ids: &mut HashMap<String, String>, print: bool) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(()); // connected and closed: a probe
    }
    let (mut length, mut key) = (0usize, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "idempotency-key" => key = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let (status, answer) = if !request_line.starts_with("POST /send ") {
        ("404 Not Found", r#"{"error":"POST /send"}"#.to_owned())
    } else {
        let next = format!("dev-{}", ids.len() + 1);
        let id = match key {
            Some(k) => ids.entry(k).or_insert_with(|| next.clone()).clone(),
            None => next.clone(),
        };
        if print && id == next {
            eprintln!("xtask mail sink: {id}: {}", String::from_utf8_lossy(&body));
        }
        ("200 OK", format!(r#"{{"id":"{id}"}}"#))
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )
}
