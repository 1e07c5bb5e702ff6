//! Counters in the Prometheus text format on `GET /metrics`, served on a local
//! address by one thread, one short request at a time.

use crate::state::Shared;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

pub fn spawn(shared: Arc<Shared>, listener: TcpListener) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let mut head = [0u8; 2048];
                let n = s.read(&mut head).unwrap_or(0);
                let ok = head[..n].starts_with(b"GET /metrics ");
                let (status, body) = if ok {
                    ("200 OK", render(&shared))
                } else {
                    ("404 Not Found", "only GET /metrics\n".to_string())
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(())
}

pub fn render(shared: &Shared) -> String {
    let c = &shared.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP ucloud_lb_{name} {help}\n# TYPE ucloud_lb_{name} {kind}\nucloud_lb_{name} {value}");
    };
    metric(
        "connections_total",
        "counter",
        "Client connections admitted.",
        c.connections.load(Relaxed),
    );
    metric(
        "connections_active",
        "gauge",
        "Client connections open now.",
        shared.active.load(Relaxed),
    );
    metric(
        "clients_active",
        "gauge",
        "Client addresses with an open connection.",
        shared.clients() as u64,
    );
    metric(
        "refused_limit_total",
        "counter",
        "Connections closed at once: max_connections reached.",
        c.refused_global.load(Relaxed),
    );
    metric(
        "refused_per_client_total",
        "counter",
        "Connections closed at once: max_per_client reached.",
        c.refused_per_client.load(Relaxed),
    );
    metric(
        "handshake_errors_total",
        "counter",
        "TLS handshakes that failed or timed out.",
        c.handshake_errors.load(Relaxed),
    );
    metric(
        "no_backend_total",
        "counter",
        "Connections answered 502: no backend available.",
        c.no_backend.load(Relaxed),
    );
    metric(
        "idle_timeouts_total",
        "counter",
        "Connections closed for idleness.",
        c.idle_timeouts.load(Relaxed),
    );
    metric(
        "request_timeouts_total",
        "counter",
        "Connections answered 408: no complete request head within request_timeout.",
        c.request_timeouts.load(Relaxed),
    );
    metric(
        "busy_total",
        "counter",
        "Requests answered 502 BUSY: no place on a gateway within queue_timeout.",
        c.busy.load(Relaxed),
    );
    metric(
        "bytes_in_total",
        "counter",
        "Bytes from clients to backends.",
        c.bytes_in.load(Relaxed),
    );
    metric(
        "bytes_out_total",
        "counter",
        "Bytes from backends to clients.",
        c.bytes_out.load(Relaxed),
    );
    metric(
        "reloads_total",
        "counter",
        "Successful reloads.",
        c.reloads.load(Relaxed),
    );
    metric(
        "reload_failures_total",
        "counter",
        "Reloads refused (the old configuration stays).",
        c.reload_failures.load(Relaxed),
    );
    let generation = shared.generation();
    let per: [(&str, &str, &str); 9] = [
        (
            "backend_up",
            "gauge",
            "1 when the backend passes its health checks.",
        ),
        (
            "backend_draining",
            "gauge",
            "1 when the backend takes no new connections.",
        ),
        ("backend_weight", "gauge", "Configured weight."),
        (
            "backend_connections_active",
            "gauge",
            "Connections open to the backend.",
        ),
        (
            "backend_connections_total",
            "counter",
            "Connections sent to the backend.",
        ),
        (
            "backend_connect_errors_total",
            "counter",
            "Failed connects to the backend.",
        ),
        (
            "backend_check_failures_total",
            "counter",
            "Failed health checks.",
        ),
        (
            "backend_cut_total",
            "counter",
            "Connections closed because the backend was marked down (on_marked_down = close).",
        ),
        (
            "backend_bytes_total",
            "counter",
            "Bytes relayed, by direction.",
        ),
    ];
    for (name, kind, help) in per {
        let _ = writeln!(
            out,
            "# HELP ucloud_lb_{name} {help}\n# TYPE ucloud_lb_{name} {kind}"
        );
        for b in &generation.backends {
            let label = format!("backend=\"{}\"", b.name);
            let v = |x: bool| u64::from(x);
            match name {
                "backend_up" => line(&mut out, name, &label, v(b.up.load(Relaxed))),
                "backend_draining" => line(&mut out, name, &label, v(b.drain.load(Relaxed))),
                "backend_weight" => line(&mut out, name, &label, b.weight.load(Relaxed).into()),
                "backend_connections_active" => {
                    line(&mut out, name, &label, b.active.load(Relaxed))
                }
                "backend_connections_total" => {
                    line(&mut out, name, &label, b.connections.load(Relaxed))
                }
                "backend_connect_errors_total" => {
                    line(&mut out, name, &label, b.connect_errors.load(Relaxed))
                }
                "backend_check_failures_total" => {
                    line(&mut out, name, &label, b.check_failures.load(Relaxed))
                }
                "backend_cut_total" => line(&mut out, name, &label, b.cut.load(Relaxed)),
                _ => {
                    line(
                        &mut out,
                        name,
                        &format!("{label},direction=\"in\""),
                        b.bytes_in.load(Relaxed),
                    );
                    line(
                        &mut out,
                        name,
                        &format!("{label},direction=\"out\""),
                        b.bytes_out.load(Relaxed),
                    );
                }
            }
        }
    }
    out
}

fn line(out: &mut String, name: &str, labels: &str, value: u64) {
    let _ = writeln!(out, "ucloud_lb_{name}{{{labels}}} {value}");
}
