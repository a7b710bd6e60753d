//! `bulwark-testpod`: the program behind the test image `bulwark.dev/testpod` on node agents. A
//! small HTTP server whose health the tests can break, that reads and writes files (volumes) and
//! fetches URLs from inside the pod (Service DNS names, NetworkPolicy).
//!
//!   GET /                      the pod's hostname
//!   GET /healthz, /ready       200, or 500 once broken with /set?flag=unhealthy|unready
//!   GET /set?flag=F            unhealthy, unready, healthy (clears both)
//!   GET /write?path=P&value=V  GET /read?path=P
//!   GET /fetch?url=http://host:port/path   the body of that URL, fetched from this pod
//!   GET /env?name=N            an environment variable;  GET /id  uid and gid
//!
//! Flags: --port=N (8080), --ignore-sigterm (to test the grace period's SIGKILL). Every request
//! is logged to stderr.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

const UNHEALTHY: &str = "/tmp/bulwark-testpod-unhealthy";
const UNREADY: &str = "/tmp/bulwark-testpod-unready";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = args
        .iter()
        .find_map(|a| a.strip_prefix("--port="))
        .unwrap_or("8080")
        .to_string();
    if args.iter().any(|a| a == "--ignore-sigterm") {
        // SAFETY: setting a signal disposition to SIG_IGN.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    eprintln!("bulwark-testpod listening on :{port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve(stream);
        });
    }
}

fn query(target: &str, key: &str) -> Option<String> {
    let (_, query) = target.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| decode(v))
    })
}

fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    reader.read_line(&mut line)?;
    // Read the rest of the request head: closing with unread input would reset the connection.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    // One log line per request, so tests can follow the log.
    eprintln!("{}", line.trim_end());
    let path = target.split('?').next().unwrap_or("/");
    let (code, body) = match path {
        "/" => (
            200,
            std::fs::read_to_string("/etc/hostname").unwrap_or_default(),
        ),
        "/healthz" if std::path::Path::new(UNHEALTHY).exists() => (500, "unhealthy\n".into()),
        "/ready" if std::path::Path::new(UNREADY).exists() => (500, "unready\n".into()),
        "/healthz" | "/ready" => (200, "ok\n".into()),
        "/set" => match query(&target, "flag").as_deref() {
            Some("unhealthy") => (200, touch(UNHEALTHY)),
            Some("unready") => (200, touch(UNREADY)),
            Some("healthy") => {
                let _ = std::fs::remove_file(UNHEALTHY);
                let _ = std::fs::remove_file(UNREADY);
                (200, "healthy\n".into())
            }
            _ => (400, "flag must be unhealthy, unready or healthy\n".into()),
        },
        "/write" => match (query(&target, "path"), query(&target, "value")) {
            (Some(p), Some(v)) => match std::fs::write(&p, v) {
                Ok(()) => (200, "written\n".into()),
                Err(e) => (500, format!("{e}\n")),
            },
            _ => (400, "path and value are required\n".into()),
        },
        "/read" => match query(&target, "path").map(std::fs::read_to_string) {
            Some(Ok(contents)) => (200, contents),
            Some(Err(e)) => (404, format!("{e}\n")),
            None => (400, "path is required\n".into()),
        },
        "/fetch" => match query(&target, "url").map(|url| fetch(&url)) {
            Some(Ok(body)) => (200, body),
            Some(Err(e)) => (502, format!("{e}\n")),
            None => (400, "url is required\n".into()),
        },
        "/env" => match query(&target, "name").map(std::env::var) {
            Some(Ok(value)) => (200, value),
            Some(Err(e)) => (404, format!("{e}\n")),
            None => (400, "name is required\n".into()),
        },
        // SAFETY: getuid and getgid cannot fail.
        "/id" => (
            200,
            format!("{} {}", unsafe { libc::getuid() }, unsafe {
                libc::getgid()
            }),
        ),
        _ => (404, "not found\n".into()),
    };
    write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn touch(path: &str) -> String {
    match std::fs::write(path, "") {
        Ok(()) => format!("{path} created\n"),
        Err(e) => format!("{e}\n"),
    }
}

/// A plain HTTP/1.0 GET (names resolve through the pod's /etc/resolv.conf).
fn fetch(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let address = with_port
        .to_socket_addrs()
        .map_err(|e| format!("resolving {authority}: {e}"))?
        .next()
        .ok_or(format!("{authority} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|e| format!("connecting to {authority} ({address}): {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("reading from {authority}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("malformed response")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("{authority} answered HTTP {status}"));
    }
    Ok(body.to_string())
}
