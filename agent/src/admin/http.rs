//! A deliberately small HTTP/1.1 server: GET/HEAD only, one request per connection, bounded
//! request size and time. Enough for probes, Prometheus and `vipwire status`.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{AdminState, metrics, status};

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(error) = handle(stream, state).await {
                        tracing::debug!(%error, "admin request");
                    }
                });
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "admin endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

async fn handle(mut stream: TcpStream, state: Arc<AdminState>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = find_head_end(&buf) {
                return Ok::<_, std::io::Error>(Some(end));
            }
            if buf.len() > MAX_REQUEST {
                return Ok(None);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
    let Some(end) = head else {
        return write(&mut stream, false, Response::text(400, "bad request\n")).await;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let response = match method {
        "GET" | "HEAD" => route(path, state).await,
        _ => Response::text(405, "only GET and HEAD\n"),
    };
    write(&mut stream, method == "HEAD", response).await
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

async fn route(path: &str, state: Arc<AdminState>) -> Response {
    match path {
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            if state.ready() {
                Response::text(200, "ready\n")
            } else {
                Response::text(
                    503,
                    format!("not ready: {}\n", status::not_ready_reason(&state)),
                )
            }
        }
        "/metrics" => {
            let text = blocking(state, |s| metrics::render(&s)).await;
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: text,
            }
        }
        "/status" => {
            let json = blocking(state, |s| {
                serde_json::to_string_pretty(&status::AgentStatus::collect(&s))
                    .expect("status serializes")
            })
            .await;
            Response {
                status: 200,
                content_type: "application/json",
                body: json + "\n",
            }
        }
        _ => Response::text(404, "not found: try /healthz /readyz /metrics /status\n"),
    }
}

/// Reading the pinned maps is a handful of syscalls: keep them off the async workers.
async fn blocking(
    state: Arc<AdminState>,
    f: impl FnOnce(Arc<AdminState>) -> String + Send + 'static,
) -> String {
    tokio::task::spawn_blocking(move || f(state))
        .await
        .unwrap_or_else(|e| format!("internal error: {e}\n"))
}

async fn write(stream: &mut TcpStream, head_only: bool, response: Response) -> std::io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if !head_only {
        out.push_str(&response.body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}
