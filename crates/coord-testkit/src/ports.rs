//! Free loopback ports for etcd listeners.
//!
//! A port is found by binding `127.0.0.1:0` and releasing it; etcd binds it again a
//! moment later. Another process may take it in between: starters detect that from
//! etcd's log ("address already in use") and retry with fresh ports. Within this
//! process a port is handed out at most once, so concurrent tests never collide.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::{Mutex, PoisonError},
};

use crate::Error;

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback port that was free a moment ago and that this process never handed out before.
pub(crate) fn free_port() -> Result<u16, Error> {
    // Holding the listeners until the end makes the kernel give distinct ports to the attempts.
    let mut held = Vec::new();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..64 {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .map_err(|e| Error::io("cannot bind a free port on 127.0.0.1", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the address of a bound port", e))?
            .port();
        if handed_out.insert(port) {
            return Ok(port);
        }
        held.push(listener);
    }
    Err(Error::io(
        "no fresh loopback port after 64 attempts",
        std::io::Error::from(std::io::ErrorKind::AddrInUse),
    ))
}

/// The three ports one etcd member listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberPorts {
    pub(crate) client: u16,
    pub(crate) peer: u16,
    pub(crate) metrics: u16,
}

impl MemberPorts {
    pub(crate) fn allocate() -> Result<Self, Error> {
        Ok(MemberPorts {
            client: free_port()?,
            peer: free_port()?,
            metrics: free_port()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_never_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
