//! Active health checks: one thread per backend asks the gateway's own health
//! endpoint, which it answers without starting the dispatcher.

use crate::backend::Backend;
use crate::state::Shared;
use std::io::{Read, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use ucloud_http::proxy_v2;

pub fn spawn(shared: Arc<Shared>, backend: Arc<Backend>) {
    let name = format!("health-{}", backend.name);
    let spawned = std::thread::Builder::new()
        .name(name)
        .stack_size(128 * 1024)
        .spawn(move || run(&shared, &backend));
    if let Err(e) = spawned {
        // Without its checker a backend would never come back after a failure.
        panic!("cannot start a health-check thread: {e}");
    }
}

fn run(shared: &Shared, backend: &Backend) {
    loop {
        if backend.retired.load(Relaxed) || shared.stopping.load(Relaxed) {
            return;
        }
        let generation = shared.generation();
        let c = &generation.config;
        match check(backend, &c.health_path, c.health_timeout) {
            Ok(()) => backend.record(true, c.health_rise, c.health_fall, ""),
            Err(why) => backend.record(false, c.health_rise, c.health_fall, &why),
        }
        let interval = c.health_interval;
        drop(generation);
        std::thread::sleep(interval);
    }
}

fn check(backend: &Backend, path: &str, timeout: Duration) -> Result<(), String> {
    let mut s = backend
        .connect(timeout)
        .map_err(|e| format!("health check: connect: {e}"))?;
    s.set_timeouts(Some(timeout))
        .map_err(|e| format!("health check: {e}"))?;
    let mut request = Vec::new();
    if backend.proxy_protocol.load(Relaxed) {
        request.extend_from_slice(&proxy_v2::local());
    }
    request.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: ucloud-lb\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    s.write_all(&request)
        .map_err(|e| format!("health check: send: {e}"))?;
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match s.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("health check: no answer: {e}")),
        }
    }
    let head = &head[..got];
    if head == b"HTTP/1.1 200" || head == b"HTTP/1.0 200" {
        Ok(())
    } else {
        Err(format!(
            "health check: {path} answered {:?}",
            String::from_utf8_lossy(head)
        ))
    }
}
