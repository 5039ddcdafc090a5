//! The egress policy: where a browser connection the broker makes for a user may go.
//! It keeps bring-your-own sessions from reaching where they must not (server-side
//! request forgery): loopback, private, link-local and metadata addresses are refused
//! unless allowed, and this broker's own browsers are refused always.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EgressError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error(
        "{host} is {ip}, {class}, which this broker does not connect to unless it is allowed (byo_allow, CDPGATE_BYO_ALLOW)"
    )]
    Forbidden {
        host: String,
        ip: IpAddr,
        class: &'static str,
    },
    #[error("{addr} is this broker or one of its own browsers, which a bring-your-own session can never reach")]
    OwnBrowser { addr: SocketAddr },
}

/// Which addresses a bring-your-own session may connect to.
pub struct Egress {
    allow_nets: Vec<IpNet>,
    /// Lower-case names; `*.example.com` allows every name under `example.com`.
    allow_hosts: Vec<String>,
    /// Ports on loopback that are this broker's browsers, live right now.
    own_ports: Arc<Mutex<HashSet<u16>>>,
    /// The broker's own listening port, so a session cannot loop back into it.
    broker_port: u16,
    resolve_timeout: Duration,
}

/// Parses the entries of `byo_allow`; answers the bad ones as errors.
pub fn parse_allow_list(entries: &[String]) -> Result<(Vec<IpNet>, Vec<String>), Vec<String>> {
    let mut nets = Vec::new();
    let mut hosts = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        let e = entry.trim();
        if let Ok(net) = e.parse::<IpNet>() {
            nets.push(net.trunc());
        } else if let Ok(ip) = e.parse::<IpAddr>() {
            nets.push(IpNet::from(ip));
        } else if is_host_pattern(e) {
            hosts.push(e.to_ascii_lowercase());
        } else {
            errors.push(format!(
                "byo_allow: {e:?} is neither a CIDR, an IP address nor a host name"
            ));
        }
    }
    if errors.is_empty() {
        Ok((nets, hosts))
    } else {
        Err(errors)
    }
}

fn is_host_pattern(s: &str) -> bool {
    let name = s.strip_prefix("*.").unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

impl Egress {
    pub fn new(
        allow: &[String],
        own_ports: Arc<Mutex<HashSet<u16>>>,
        broker_port: u16,
        resolve_timeout: Duration,
    ) -> Egress {
        // `Config::validate` has already refused bad entries.
        let (allow_nets, allow_hosts) = parse_allow_list(allow).unwrap_or_default();
        Egress {
            allow_nets,
            allow_hosts,
            own_ports,
            broker_port,
            resolve_timeout,
        }
    }

    /// The addresses of `host:port`, every one of them allowed; the caller connects to
    /// these and no others (a second lookup could answer differently).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                let resolve_error = |reason: String| EgressError::Resolve {
                    host: host.to_owned(),
                    reason,
                };
                tokio::time::timeout(self.resolve_timeout, tokio::net::lookup_host((host, port)))
                    .await
                    .map_err(|_| resolve_error("the lookup timed out".into()))?
                    .map_err(|e| resolve_error(e.to_string()))?
                    .collect()
            }
        };
        if addrs.is_empty() {
            return Err(EgressError::Resolve {
                host: host.to_owned(),
                reason: "no address".into(),
            });
        }
        let host_allowed = self.host_allowed(host);
        for addr in &addrs {
            self.check(host, *addr, host_allowed)?;
        }
        Ok(addrs)
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.allow_hosts.iter().any(|pattern| match pattern.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
            }
            None => *pattern == host,
        })
    }

    fn check(&self, host: &str, addr: SocketAddr, host_allowed: bool) -> Result<(), EgressError> {
        let ip = canonical(addr.ip());
        if (ip.is_loopback() || ip.is_unspecified())
            && (addr.port() == self.broker_port || self.own_ports.lock().expect("ports lock").contains(&addr.port()))
        {
            return Err(EgressError::OwnBrowser { addr });
        }
        let Some(class) = restricted_class(ip) else {
            return Ok(());
        };
        let allowed = if class == METADATA {
            // Only an exact entry opens a metadata address; a broad range never does.
            self.allow_nets
                .iter()
                .any(|n| n.prefix_len() == n.max_prefix_len() && n.contains(&ip))
        } else {
            host_allowed || self.allow_nets.iter().any(|n| n.contains(&ip))
        };
        if allowed {
            Ok(())
        } else {
            Err(EgressError::Forbidden {
                host: host.to_owned(),
                ip,
                class,
            })
        }
    }
}

const METADATA: &str = "a cloud metadata address";

/// IPv4 carried in IPv6 (mapped, or NAT64) is judged as the IPv4 it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// Why an address is refused by default, or `None` for an ordinary public address.
fn restricted_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4 == Ipv4Addr::new(169, 254, 169, 254) || v4 == Ipv4Addr::new(100, 100, 100, 200) {
                Some(METADATA)
            } else if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_private() {
                Some("a private address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("a shared (carrier-grade NAT) address")
            } else if o[0] == 0
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] >= 240
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
            {
                Some("a reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some(METADATA)
            } else if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("a reserved address")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("a private address")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow: &[&str], own: &[u16]) -> Egress {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        Egress::new(
            &allow,
            Arc::new(Mutex::new(own.iter().copied().collect())),
            3000,
            Duration::from_secs(2),
        )
    }

    #[tokio::test]
    async fn private_and_special_addresses_are_refused_by_default() {
        let e = egress(&[], &[]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "224.0.0.1",
        ] {
            let r = e.resolve(ip, 9222).await;
            assert!(matches!(r, Err(EgressError::Forbidden { .. })), "{ip}: {r:?}");
        }
        assert!(e.resolve("93.184.216.34", 9222).await.is_ok());
        assert!(e.resolve("2606:4700::1", 443).await.is_ok());
        let msg = e.resolve("10.0.0.1", 1).await.unwrap_err().to_string();
        assert!(
            msg.contains("a private address") && msg.contains("CDPGATE_BYO_ALLOW"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn the_allow_list_opens_networks_and_names_but_never_own_browsers() {
        let e = egress(&["127.0.0.0/8", "10.0.0.0/8", "localhost"], &[41000]);
        assert!(e.resolve("127.0.0.1", 9222).await.is_ok());
        assert!(e.resolve("10.9.9.9", 9222).await.is_ok());
        assert!(e.resolve("localhost", 9222).await.is_ok());
        assert!(matches!(
            e.resolve("192.168.0.1", 9222).await,
            Err(EgressError::Forbidden { .. })
        ));
        for (host, port) in [
            ("127.0.0.1", 41000),
            ("localhost", 41000),
            ("0.0.0.0", 41000),
            ("127.0.0.1", 3000),
        ] {
            assert!(
                matches!(e.resolve(host, port).await, Err(EgressError::OwnBrowser { .. })),
                "{host}:{port}"
            );
        }
        // A broad range does not open the metadata address; an exact entry does.
        let broad = egress(&["169.254.0.0/16"], &[]);
        assert!(broad.resolve("169.254.169.254", 80).await.is_err());
        assert!(broad.resolve("169.254.1.1", 80).await.is_ok());
        assert!(
            egress(&["169.254.169.254"], &[])
                .resolve("169.254.169.254", 80)
                .await
                .is_ok()
        );
    }

    #[test]
    fn allow_entries_parse_or_are_reported() {
        let (nets, hosts) =
            parse_allow_list(&["127.0.0.0/8".into(), "::1".into(), "*.Browsers.Internal".into()]).unwrap();
        assert_eq!(nets.len(), 2);
        assert_eq!(hosts, vec!["*.browsers.internal"]);
        let errors = parse_allow_list(&["10.0.0.0/33".into(), "bad host!".into()]).unwrap_err();
        assert_eq!(errors.len(), 2);
        let e = egress(&["*.browsers.internal"], &[]);
        assert!(e.host_allowed("a.browsers.internal"));
        assert!(!e.host_allowed("browsers.internal"));
        assert!(!e.host_allowed("evilbrowsers.internal"));
    }
}
