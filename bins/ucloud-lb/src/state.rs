//! What every thread shares: the current generation (configuration, TLS settings,
//! backends; replaced whole on reload, while old connections keep theirs), the
//! connection counts behind the limits, and the counters.

use crate::backend::{pick, Backend};
use crate::config::Config;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Instant;

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
    pub request_timeouts: AtomicU64,
    pub busy: AtomicU64,
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
    /// Connections to gateways per client address; `freed` is told when one ends.
    places: Mutex<HashMap<IpAddr, usize>>,
    freed: Condvar,
    pub counters: Counters,
}

/// What a request found when it asked for a gateway.
pub enum Reserved {
    /// Backend `i` of the generation, with the place held.
    Got(usize, Lease),
    /// No backend is up (or all were tried).
    NoBackend,
    /// The client holds its share, or every backend is full, until the deadline.
    Busy,
}

impl Shared {
    pub fn new(generation: Generation) -> Shared {
        Shared {
            current: RwLock::new(Arc::new(generation)),
            turn: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            active: AtomicU64::new(0),
            clients: Mutex::new(HashMap::new()),
            places: Mutex::new(HashMap::new()),
            freed: Condvar::new(),
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

    /// A place on a backend for a request of `ip`: at most `max_backend_per_client`
    /// of the client's at once, and at most each backend's `max_connections`. Waits
    /// for one until `until`. The count and the choice happen under one lock, so
    /// concurrent requests never overshoot either limit.
    pub fn reserve(
        self: &Arc<Self>,
        ip: IpAddr,
        config: &Config,
        backends: &[Arc<Backend>],
        tried: &[usize],
        until: Instant,
    ) -> Reserved {
        let mut places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let held = places.get(&ip).copied().unwrap_or(0);
            if held < config.max_backend_per_client {
                if let Some(i) = pick(backends, tried, &self.turn) {
                    *places.entry(ip).or_insert(0) += 1;
                    let place = Place {
                        shared: self.clone(),
                        ip,
                    };
                    return Reserved::Got(i, Lease::new(backends[i].clone(), Some(place)));
                }
            }
            let any = backends
                .iter()
                .enumerate()
                .any(|(i, b)| !tried.contains(&i) && b.takes_new());
            if !any {
                return Reserved::NoBackend;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Reserved::Busy;
            }
            places = self
                .freed
                .wait_timeout(places, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
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

/// A client's place among the gateways, held by the connection's lease.
pub struct Place {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut places = self.shared.places.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = places.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                places.remove(&self.ip);
            }
        }
        drop(places);
        self.shared.freed.notify_all();
    }
}

/// Counts a connection as active on its backend for as long as it lives, and holds
/// its client's place among the gateways' (freed after the backend's count).
pub struct Lease(
    pub Arc<Backend>,
    // Never read: held for its Drop.
    #[allow(dead_code)] Option<Place>,
    /// The backend's `downs` when the connection was made.
    u64,
);

impl Lease {
    pub fn new(b: Arc<Backend>, place: Option<Place>) -> Lease {
        b.active.fetch_add(1, Relaxed);
        b.connections.fetch_add(1, Relaxed);
        let downs = b.downs.load(Relaxed);
        Lease(b, place, downs)
    }

    /// Whether the connection is to be closed: its backend was marked down since
    /// it was made, and `on_marked_down = close`.
    pub fn cut(&self) -> bool {
        self.0.cut_when_down.load(Relaxed) && self.0.downs.load(Relaxed) != self.2
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}
