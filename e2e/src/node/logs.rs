//! The kubelet's containerLogs endpoint, so `kubectl logs` works: the API server connects to the
//! node's InternalIP and daemon port over TLS with its kubelet client certificate, which this
//! server requires (signed by the cluster CA) before answering.

use super::pod::NodeContext;
use anyhow::Result;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bulwark_controllers::tls::MutualTlsListener;
pub use bulwark_controllers::tls::TlsFiles;
use serde::Deserialize;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Serves on `tcp`, bound by the caller before the Node advertises its port.
pub async fn serve(
    ctx: Arc<NodeContext>,
    tcp: tokio::net::TcpListener,
    files: TlsFiles,
) -> Result<()> {
    let listener = MutualTlsListener::new(tcp, &files)?;
    let router = axum::Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .with_state(ctx);
    axum::serve(listener, router).await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogOptions {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    previous: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

/// Log files of one container, oldest first (`<restart count>.log`).
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.path().file_stem()?.to_str()?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// The last `n` lines of `text`.
pub fn tail(text: &[u8], n: usize) -> &[u8] {
    let mut newlines = 0;
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    for (i, byte) in body.iter().enumerate().rev() {
        if *byte == b'\n' {
            newlines += 1;
            if newlines == n {
                return &text[i + 1..];
            }
        }
    }
    if n == 0 { &[] } else { text }
}

async fn container_logs(
    State(ctx): State<Arc<NodeContext>>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(options): Query<LogOptions>,
) -> Response {
    let Some(uid) = ctx.pod_uid(&namespace, &pod) else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on this node\n"),
        )
            .into_response();
    };
    let dir = super::pod::log_dir(&ctx.dir, &uid, &container);
    let files = log_files(&dir);
    let chosen = if options.previous {
        files.len().checked_sub(2).map(|i| &files[i])
    } else {
        files.last()
    };
    let Some(file) = chosen.cloned() else {
        let what = if options.previous {
            "previous terminated container"
        } else {
            "container"
        };
        return (
            StatusCode::BAD_REQUEST,
            format!("{what} {container:?} in pod {pod:?} has no logs\n"),
        )
            .into_response();
    };
    let mut text = std::fs::read(&file).unwrap_or_default();
    if let Some(n) = options.tail_lines {
        text = tail(&text, n).to_vec();
    }
    if let Some(limit) = options.limit_bytes {
        text.truncate(limit);
    }
    if !options.follow || options.previous {
        return text.into_response();
    }
    // Follow: what is there, then what the running container appends until it stops.
    let start = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let follow = futures::stream::unfold(
        (ctx, file, start, Some(text)),
        |(ctx, file, offset, first)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, std::io::Error>(first), (ctx, file, offset, None)));
            }
            loop {
                // Small reads of a local file; not worth a blocking-pool hop.
                let mut opened = std::fs::File::open(&file).ok()?;
                let length = opened.metadata().ok()?.len();
                if length > offset {
                    opened.seek(std::io::SeekFrom::Start(offset)).ok()?;
                    let mut more = Vec::new();
                    opened.read_to_end(&mut more).ok()?;
                    let next = offset + more.len() as u64;
                    return Some((Ok(more), (ctx, file, next, None)));
                }
                if !ctx.is_logging(&file) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    );
    axum::body::Body::from_stream(follow).into_response()
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail(b"a\n", 5), b"a\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }
}
