//! The connection gate: caps on open connections, per client IP address and for the whole
//! process, checked when a connection is accepted and before anything is read from it.
//!
//! A connection over a cap is answered at once with a 503 and closed, so it holds its file
//! descriptor for microseconds instead of until a header timeout, and the process never reaches
//! its open-file limit (where `accept` would fail and the listener would stall with connections
//! waiting in the kernel). An admitted connection carries a [`Ticket`] in its connection data;
//! the ticket gives its place back when actix-http drops the connection.

use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use actix_web::dev::Extensions;

use crate::metrics::Metrics;

/// File descriptors kept free besides the database pools, push and Redis: the listener,
/// epoll and wake-up descriptors of each worker, logs, the SQLite WAL and shared-memory files.
const RESERVED_FILES: u64 = 128;
/// Descriptors counted for each database connection (a SQLite connection opens three files).
const FILES_PER_DATABASE_CONNECTION: u64 = 3;
/// Connections to Redis, when cluster mode is on: commands, subscriptions, probes.
const REDIS_CONNECTIONS: u64 = 8;
/// The smallest process-wide cap the open-file limit may derive.
const MIN_DERIVED_CAP: u64 = 16;

/// What a refused connection is sent before it is closed. Written straight to the new socket,
/// whose send buffer is empty, so the write never blocks.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 81\r\n\r\n\
{\"error\":\"too_many_connections\",\"message\":\"too many open connections; try again\"}";

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PerIp,
    Process,
}

/// Open connections, per IP address and in all.
#[derive(Debug)]
pub struct Gate {
    per_ip: u32,
    total: u64,
    open: Mutex<Counts>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    by_ip: HashMap<IpAddr, u32>,
}

/// One admitted connection's place; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    ip: Option<IpAddr>,
}

impl Gate {
    /// A gate that admits `total` connections in all and `per_ip` from one address (0: no cap
    /// per address).
    pub fn new(total: u64, per_ip: u32, metrics: Arc<Metrics>) -> Arc<Gate> {
        Arc::new(Gate {
            per_ip,
            total,
            open: Mutex::new(Counts::default()),
            metrics,
        })
    }

    /// The process-wide cap.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Takes a place for a connection from `ip` (unknown for a Unix socket), or says which cap
    /// it is over.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Ticket, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.total {
            Metrics::add(&self.metrics.connections_refused_process, 1);
            return Err(Refusal::Process);
        }
        if let Some(ip) = ip.filter(|_| self.per_ip > 0) {
            let from_ip = open.by_ip.entry(ip).or_insert(0);
            if *from_ip >= self.per_ip {
                Metrics::add(&self.metrics.connections_refused_per_ip, 1);
                return Err(Refusal::PerIp);
            }
            *from_ip += 1;
        }
        open.total += 1;
        self.metrics
            .connections_open
            .store(open.total as i64, Ordering::Relaxed);
        Ok(Ticket {
            gate: self.clone(),
            ip: ip.filter(|_| self.per_ip > 0),
        })
    }

    /// Open connections now.
    pub fn open(&self) -> u64 {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// The `on_connect` hook of the HTTP server: admits the connection and keeps its ticket in
    /// the connection data, or answers 503 and shuts the socket so that actix-http reads an end
    /// of stream and drops it.
    pub fn on_connect(self: &Arc<Self>, connection: &dyn Any, data: &mut Extensions) {
        let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        let ip = stream.peer_addr().ok().map(|a| a.ip());
        match self.admit(ip) {
            Ok(ticket) => {
                data.insert(ticket);
            }
            Err(refusal) => {
                tracing::debug!(?ip, ?refusal, "connection refused");
                let socket = socket2::SockRef::from(stream);
                let _ = socket.send(REFUSAL);
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        self.gate
            .metrics
            .connections_open
            .store(open.total as i64, Ordering::Relaxed);
        if let Some(ip) = self.ip
            && let std::collections::hash_map::Entry::Occupied(mut entry) = open.by_ip.entry(ip)
        {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// What the process-wide cap is when `limits.max_connections` is 0: the open-file limit less
/// what the rest of the process may open.
pub fn derived_cap(open_files: u64, database_connections: u32, push: u64, redis: bool) -> u64 {
    let reserved = RESERVED_FILES
        + FILES_PER_DATABASE_CONNECTION * u64::from(database_connections)
        + push
        + if redis { REDIS_CONNECTIONS } else { 0 };
    open_files.saturating_sub(reserved).max(MIN_DERIVED_CAP)
}

/// Raises the soft open-file limit to the hard one, as many servers do at start, and returns
/// the limit in force.
#[cfg(unix)]
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    fn gate(total: u64, per_ip: u32) -> Arc<Gate> {
        Gate::new(total, per_ip, Arc::new(Metrics::default()))
    }

    fn refused(gate: &Gate) -> (u64, u64) {
        (
            gate.metrics
                .connections_refused_per_ip
                .load(Ordering::Relaxed),
            gate.metrics
                .connections_refused_process
                .load(Ordering::Relaxed),
        )
    }

    #[test]
    fn an_address_over_its_cap_is_refused_while_others_are_admitted() {
        let gate = gate(10, 2);
        let _a = gate.admit(ip(1)).unwrap();
        let b = gate.admit(ip(1)).unwrap();
        assert_eq!(gate.admit(ip(1)).unwrap_err(), Refusal::PerIp);
        let _c = gate.admit(ip(2)).unwrap();
        drop(b);
        let _d = gate.admit(ip(1)).unwrap();
        assert_eq!(gate.open(), 3);
        assert_eq!(refused(&gate), (1, 0));
        assert_eq!(gate.metrics.connections_open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_process_cap_counts_every_address_and_frees_places_on_drop() {
        let gate = gate(2, 0);
        let a = gate.admit(ip(1)).unwrap();
        let _b = gate.admit(ip(2)).unwrap();
        assert_eq!(gate.admit(ip(3)).unwrap_err(), Refusal::Process);
        assert_eq!(gate.admit(None).unwrap_err(), Refusal::Process);
        drop(a);
        let _c = gate.admit(None).unwrap();
        assert_eq!(refused(&gate), (0, 2));
    }

    #[test]
    fn tickets_leave_no_entry_behind() {
        let gate = gate(100, 5);
        let tickets: Vec<_> = (0..50).map(|i| gate.admit(ip(i)).unwrap()).collect();
        drop(tickets);
        assert_eq!(gate.open(), 0);
        assert!(gate.open.lock().unwrap().by_ip.is_empty());
    }

    #[test]
    fn the_derived_cap_leaves_room_for_the_rest_of_the_process() {
        assert_eq!(derived_cap(1024, 4, 0, false), 1024 - 128 - 12);
        assert_eq!(
            derived_cap(20_000, 4, 256, true),
            20_000 - 128 - 12 - 256 - 8
        );
        assert_eq!(derived_cap(100, 50, 0, false), MIN_DERIVED_CAP);
    }

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "too_many_connections");
    }
}
