//! A shared browser's gateway ports, bound before it is launched: Landlock takes the ports
//! a browser may connect to when its ruleset is built, before the fork, and each of its
//! contexts gets a gateway of its own later. So the listeners for every context it can
//! hold at once are bound first, named in its ruleset, and lent to its contexts one at a
//! time: a context's gateway serves on one, and hands it back, still bound, when the
//! context ends. A port is never closed while the browser may connect to it, so no other
//! process can take it meanwhile.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

pub(crate) struct GatewayPorts {
    /// Every port, lent out or not.
    ports: Vec<u16>,
    /// Listeners no context uses now.
    free: Mutex<Vec<TcpListener>>,
    /// Listeners taken out of service (their context may still be open): held bound, never
    /// lent again.
    parked: Mutex<Vec<TcpListener>>,
    /// The broker's own ports, which no page may reach through a gateway: these are, while
    /// they are bound.
    own_ports: Arc<Mutex<HashSet<u16>>>,
}

impl GatewayPorts {
    /// Binds `count` listeners on fresh loopback ports.
    pub(crate) fn bind(count: usize, own_ports: Arc<Mutex<HashSet<u16>>>) -> std::io::Result<GatewayPorts> {
        let mut free = Vec::with_capacity(count);
        let mut ports = Vec::with_capacity(count);
        for _ in 0..count {
            let listener = TcpListener::bind(("127.0.0.1", 0))?;
            ports.push(listener.local_addr()?.port());
            free.push(listener);
        }
        own_ports.lock().expect("ports lock").extend(&ports);
        Ok(GatewayPorts {
            ports,
            free: Mutex::new(free),
            parked: Mutex::default(),
            own_ports,
        })
    }

    /// Every port of the set.
    pub(crate) fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// A listener no context uses, if one is left.
    pub(crate) fn take(&self) -> Option<TcpListener> {
        self.free.lock().expect("gateway ports lock").pop()
    }

    /// A listener whose context has ended, for the next one.
    pub(crate) fn put_back(&self, listener: TcpListener) {
        self.free.lock().expect("gateway ports lock").push(listener);
    }

    /// A listener whose context may not have ended: kept bound, never lent again.
    pub(crate) fn park(&self, listener: TcpListener) {
        self.parked.lock().expect("gateway ports lock").push(listener);
    }
}

impl Drop for GatewayPorts {
    fn drop(&mut self) {
        let mut own = self.own_ports.lock().expect("ports lock");
        for port in &self.ports {
            own.remove(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_the_brokers_own_while_bound_and_lent_one_at_a_time() {
        let own = Arc::<Mutex<HashSet<u16>>>::default();
        let set = GatewayPorts::bind(2, own.clone()).unwrap();
        let ports = set.ports().to_vec();
        assert_eq!(ports.len(), 2);
        assert!(ports.iter().all(|p| own.lock().unwrap().contains(p)));
        let (a, b) = (set.take().unwrap(), set.take().unwrap());
        assert!(set.take().is_none(), "no more than the set");
        // A lent listener is still bound: nobody else can take its port.
        let port = a.local_addr().unwrap().port();
        assert!(TcpListener::bind(("127.0.0.1", port)).is_err());
        set.put_back(a);
        set.park(b);
        assert_eq!(set.take().unwrap().local_addr().unwrap().port(), port);
        assert!(set.take().is_none(), "a parked listener is not lent again");
        drop(set);
        assert!(own.lock().unwrap().is_empty());
    }
}
