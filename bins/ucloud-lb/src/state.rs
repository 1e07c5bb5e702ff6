//! What every thread shares: the current generation (configuration, TLS settings,
//! backends; replaced whole on reload, while old connections keep theirs), the
//! connection counts behind the limits, and the counters.

use crate::backend::Backend;
use crate::config::Config;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

pub struct Generation {
    pub config: Config,
    pub tls: Arc<ServerConfig>,
    pub backends: Vec<Arc<Backend>>,
}

#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub refused_global: AtomicU64,
    pub refused_per_client: AtomicU64,
    pub handshake_errors: AtomicU64,
    pub no_backend: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

pub struct Shared {
    current: RwLock<Arc<Generation>>,
    pub turn: AtomicUsize,
    pub stopping: AtomicBool,
    pub active: AtomicU64,
    clients: Mutex<HashMap<IpAddr, usize>>,
    pub counters: Counters,
}

impl Shared {
    pub fn new(generation: Generation) -> Shared {
        Shared {
            current: RwLock::new(Arc::new(generation)),
            turn: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            active: AtomicU64::new(0),
            clients: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    pub fn generation(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, generation: Generation) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(generation);
    }

    /// A place for one more connection from `ip`, or `None` when a limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, config: &Config) -> Option<Slot> {
        if self.active.load(Relaxed) >= config.max_connections as u64 {
            self.counters.refused_global.fetch_add(1, Relaxed);
            return None;
        }
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let count = clients.entry(ip).or_insert(0);
        if *count >= config.max_per_client {
            self.counters.refused_per_client.fetch_add(1, Relaxed);
            return None;
        }
        *count += 1;
        self.active.fetch_add(1, Relaxed);
        self.counters.connections.fetch_add(1, Relaxed);
        Some(Slot {
            shared: self.clone(),
            ip,
        })
    }

    pub fn clients(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One admitted connection; dropping it frees its place.
pub struct Slot {
    pub shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut clients = self
            .shared
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = clients.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                clients.remove(&self.ip);
            }
        }
        self.shared.active.fetch_sub(1, Relaxed);
    }
}
