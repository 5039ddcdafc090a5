//! The egress policy: where a connection the broker makes for a user, or a page of one of
//! its browsers, may go. Two policies share these rules. Bring-your-own sessions
//! (server-side request forgery): every special address (loopback, unspecified, private,
//! link-local, shared, metadata, reserved) is refused unless allowed (`byo_allow`).
//! Managed browsers (every request of their pages passes the broker's forward proxy, the
//! `forward` module): what `browser_egress_deny` names (by default everything that is not
//! the public internet: loopback and unspecified, private, link-local, shared and the cloud
//! metadata addresses and names) is refused unless `browser_egress_allow` opens it. Both
//! always refuse this broker and its own browsers.
//!
//! Every check is made on the addresses a name resolved to, and the caller connects to
//! those very addresses; IPv4 carried in IPv6 (mapped, compatible, translated, NAT64) is
//! judged as the IPv4 it carries.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::egress_rules::{Class, Rules, canonical, parse_browser_allow_list, parse_deny_list, restricted_class};
pub(crate) use crate::egress_rules::{host_matches, parse_allow_list};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EgressError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    // The address itself is left out: a tenant would read the broker's DNS with it.
    #[error("{host} is {class}, which this broker does not connect to unless it is allowed ({setting})")]
    Forbidden {
        host: String,
        ip: IpAddr,
        class: &'static str,
        setting: &'static str,
    },
    #[error("{host} is denied by name, which this broker does not connect to unless it is allowed ({setting})")]
    ForbiddenName { host: String, setting: &'static str },
    #[error("{addr} is this broker or one of its own browsers, which a session can never reach")]
    OwnBrowser { addr: SocketAddr },
}

/// Which addresses a session's connections may reach.
pub struct Egress {
    rules: Rules,
    /// The setting that opens an exception, named in refusals.
    allow_setting: &'static str,
    /// Ports on loopback that are this broker's browsers (and their forward proxies), live
    /// right now.
    own_ports: Arc<Mutex<HashSet<u16>>>,
    /// The broker's own listening address, so a session cannot loop back into it.
    broker: SocketAddr,
    resolve_timeout: Duration,
}

impl Egress {
    /// The policy of bring-your-own sessions: every special address refused unless
    /// `byo_allow` opens it.
    pub fn for_byo(
        allow: &[String],
        own_ports: Arc<Mutex<HashSet<u16>>>,
        broker: SocketAddr,
        resolve_timeout: Duration,
    ) -> Egress {
        // `Config::validate` has already refused bad entries.
        let (allow_nets, allow_hosts) = parse_allow_list("byo_allow", allow).unwrap_or_default();
        let rules = Rules {
            deny_classes: Class::ALL.to_vec(),
            allow_nets,
            allow_hosts,
            ..Rules::default()
        };
        Egress {
            rules,
            allow_setting: "byo_allow, CDPGATE_BYO_ALLOW",
            own_ports,
            broker,
            resolve_timeout,
        }
    }

    /// The policy of webhook deliveries: every special address refused unless
    /// `webhook_allow` opens it (CIDRs, names, or the keywords of `browser_egress_allow`).
    pub fn for_webhooks(
        allow: &[String],
        own_ports: Arc<Mutex<HashSet<u16>>>,
        broker: SocketAddr,
        resolve_timeout: Duration,
    ) -> Egress {
        // `Config::validate` has already refused bad entries.
        let allowed = parse_browser_allow_list(allow).unwrap_or_default();
        Egress {
            rules: Rules {
                deny_classes: Class::ALL.to_vec(),
                allow_classes: allowed.allow_classes,
                allow_nets: allowed.allow_nets,
                allow_hosts: allowed.allow_hosts,
                ..Rules::default()
            },
            allow_setting: "webhook_allow, CDPGATE_WEBHOOK_ALLOW",
            own_ports,
            broker,
            resolve_timeout,
        }
    }

    /// The policy of the pages of managed browsers: what `deny` names, unless `allow`
    /// opens it.
    pub fn for_browsers(
        deny: &[String],
        allow: &[String],
        own_ports: Arc<Mutex<HashSet<u16>>>,
        broker: SocketAddr,
        resolve_timeout: Duration,
    ) -> Egress {
        // `Config::validate` has already refused bad entries.
        let allowed = parse_browser_allow_list(allow).unwrap_or_default();
        Egress {
            rules: Rules {
                allow_classes: allowed.allow_classes,
                allow_nets: allowed.allow_nets,
                allow_hosts: allowed.allow_hosts,
                ..parse_deny_list(deny).unwrap_or_default()
            },
            allow_setting: "browser_egress_allow, CDPGATE_BROWSER_EGRESS_ALLOW",
            own_ports,
            broker,
            resolve_timeout,
        }
    }

    /// The ports of the broker's own browsers and gateways, which this policy refuses.
    pub fn own_ports(&self) -> Arc<Mutex<HashSet<u16>>> {
        self.own_ports.clone()
    }

    /// The addresses of `host:port`, every one of them allowed; the caller connects to
    /// these and no others (a second lookup could answer differently).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        self.resolve_within(host, port, None).await
    }

    /// `resolve`, a name's lookup counted against `own` (one gateway's lookups) too.
    pub async fn resolve_within(
        &self,
        host: &str,
        port: u16,
        own: Option<&Arc<Semaphore>>,
    ) -> Result<Vec<SocketAddr>, EgressError> {
        // A name denied as such is refused before any lookup.
        let host_allowed = host_matches(&self.rules.allow_hosts, host);
        if !host_allowed && host_matches(&self.rules.deny_hosts, host) {
            return Err(EgressError::ForbiddenName {
                host: host.to_owned(),
                setting: self.allow_setting,
            });
        }
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                let name = host.to_owned();
                let lookup =
                    move || std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), port)).map(Vec::from_iter);
                look_up(lookup, own, self.resolve_timeout)
                    .await
                    .map_err(|reason| EgressError::Resolve {
                        host: host.to_owned(),
                        reason,
                    })?
            }
        };
        if addrs.is_empty() {
            return Err(EgressError::Resolve {
                host: host.to_owned(),
                reason: "no address".into(),
            });
        }
        for addr in &addrs {
            self.check(host, *addr, host_allowed)?;
        }
        Ok(addrs)
    }

    fn check(&self, host: &str, addr: SocketAddr, host_allowed: bool) -> Result<(), EgressError> {
        let ip = canonical(addr.ip());
        // One of this host's own addresses (a public one too) is this host, as loopback
        // is: the kernel delivers it locally, to every service listening on any address.
        let class = match is_this_hosts(ip) {
            true => Some(Class::Loopback),
            false => restricted_class(ip),
        };
        let own_port =
            addr.port() == self.broker.port() || self.own_ports.lock().expect("ports lock").contains(&addr.port());
        let this_host = matches!(class, Some(Class::Loopback | Class::Unspecified));
        if own_port && (this_host || ip == canonical(self.broker.ip())) {
            return Err(EgressError::OwnBrowser { addr });
        }
        let denied_by_net = self.rules.deny_nets.iter().any(|n| n.contains(&ip));
        let denied = denied_by_net || class.is_some_and(|c| self.rules.deny_classes.contains(&c));
        if !denied {
            return Ok(());
        }
        let allowed = if class == Some(Class::Metadata) {
            // Only an exact entry opens a metadata address; a broad range never does.
            self.rules
                .allow_nets
                .iter()
                .any(|n| n.prefix_len() == n.max_prefix_len() && n.contains(&ip))
        } else {
            // A keyword opens what a keyword closed, not a network denied by its own entry.
            host_allowed
                || (!denied_by_net && class.is_some_and(|c| self.rules.allow_classes.contains(&c)))
                || self.rules.allow_nets.iter().any(|n| n.contains(&ip))
        };
        if allowed {
            Ok(())
        } else {
            Err(EgressError::Forbidden {
                host: host.to_owned(),
                ip,
                class: class.map_or("a denied network", Class::describe),
                setting: self.allow_setting,
            })
        }
    }
}

/// Name lookups in flight at once, all policies together. Each runs on the blocking pool
/// (`getaddrinfo`) and holds its thread for the resolver's own retries (10-30 s) when a
/// name's servers never answer, long after the lookup was given up: a page asking for
/// names under such a server would otherwise take the pool's threads from everyone.
const MAX_LOOKUPS: usize = 128;
static LOOKUPS: Semaphore = Semaphore::const_new(MAX_LOOKUPS);

/// Runs `lookup` on the blocking pool with a place among all lookups and, if given, among
/// `own`'s, each held by the lookup's thread until it returns (not only until the caller
/// gives up); answers within `limit`, places included.
async fn look_up<F>(lookup: F, own: Option<&Arc<Semaphore>>, limit: Duration) -> Result<Vec<SocketAddr>, String>
where
    F: FnOnce() -> std::io::Result<Vec<SocketAddr>> + Send + 'static,
{
    let work = async {
        let own = match own {
            Some(own) => Some(own.clone().acquire_owned().await.map_err(|e| e.to_string())?),
            None => None,
        };
        let all = LOOKUPS.acquire().await.map_err(|e| e.to_string())?;
        let looked_up = tokio::task::spawn_blocking(move || {
            let _places = (own, all);
            lookup()
        });
        looked_up.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err("the lookup timed out".into()))
}

/// How long the host's interface addresses, once read, are taken as they are.
const INTERFACES_FRESH: Duration = Duration::from_secs(5);

/// Whether `ip` is one of this host's interface addresses (read again every few seconds:
/// addresses come and go).
fn is_this_hosts(ip: IpAddr) -> bool {
    static KNOWN: Mutex<Option<(Instant, Vec<IpAddr>)>> = Mutex::new(None);
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if known.as_ref().is_none_or(|(at, _)| at.elapsed() >= INTERFACES_FRESH) {
        let addrs = if_addrs::get_if_addrs()
            .map(|all| all.into_iter().map(|i| canonical(i.ip())).collect())
            .unwrap_or_default();
        *known = Some((Instant::now(), addrs));
    }
    known.as_ref().is_some_and(|(_, addrs)| addrs.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress_rules::{DEFAULT_BROWSER_DENY, check_browser_lists};

    /// Lookups whose servers never answer hold their threads after they are given up: a
    /// gateway's own places (and all lookups' places) stay taken until each thread returns,
    /// so one tenant's page cannot take the blocking pool's threads from everyone.
    #[tokio::test]
    async fn a_gateways_lookups_hold_their_places_until_their_threads_return() {
        let own = Arc::new(Semaphore::new(2));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hanging = |running: Arc<std::sync::atomic::AtomicUsize>, most: Arc<std::sync::atomic::AtomicUsize>| {
            move || {
                use std::sync::atomic::Ordering::SeqCst;
                let now = running.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                std::thread::sleep(Duration::from_millis(800));
                running.fetch_sub(1, SeqCst);
                Ok(vec![SocketAddr::from(([192, 0, 2, 1], 80))])
            }
        };
        let limit = Duration::from_millis(100);
        // Five at once, each given up after 100 ms: two threads run, the rest never start.
        let tries = (0..5).map(|_| look_up(hanging(running.clone(), most.clone()), Some(&own), limit));
        for r in futures_util::future::join_all(tries).await {
            assert_eq!(r.unwrap_err(), "the lookup timed out");
        }
        // Given up, the two threads still hold the gateway's places: the next waits too.
        let next = look_up(hanging(running.clone(), most.clone()), Some(&own), limit).await;
        assert!(next.is_err());
        assert_eq!(
            most.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "more threads than places"
        );
        // Once they return, lookups run again.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let after = look_up(
            || Ok(vec![SocketAddr::from(([192, 0, 2, 1], 80))]),
            Some(&own),
            Duration::from_secs(2),
        );
        assert_eq!(after.await.unwrap().len(), 1);
    }

    /// The host's own non-loopback addresses (a public or private interface address) are
    /// this host: denied with loopback, and never the broker's own port, whatever their
    /// class (before, only loopback spellings were; a host's public address reached every
    /// service listening on any address).
    #[tokio::test]
    async fn the_hosts_own_addresses_are_this_host() {
        let own: Vec<IpAddr> = if_addrs::get_if_addrs()
            .unwrap()
            .into_iter()
            .map(|i| canonical(i.ip()))
            .filter(|ip| !ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
            .collect();
        let Some(ip) = own.first() else {
            eprintln!("this machine has no address besides loopback: nothing to check");
            return;
        };
        let loopback_only = browsers(&["loopback"], &[]);
        let r = loopback_only.resolve(&ip.to_string(), 6379).await;
        assert!(matches!(r, Err(EgressError::Forbidden { .. })), "{ip}: {r:?}");
        // Opened with loopback; the broker's own port stays shut.
        let open = browsers(&["loopback"], &["loopback"]);
        assert!(open.resolve(&ip.to_string(), 6379).await.is_ok());
        let r = open.resolve(&ip.to_string(), 3000).await;
        assert!(matches!(r, Err(EgressError::OwnBrowser { .. })), "{ip}: {r:?}");
    }

    fn egress(allow: &[&str], own: &[u16]) -> Egress {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        Egress::for_byo(
            &allow,
            Arc::new(Mutex::new(own.iter().copied().collect())),
            SocketAddr::from(([127, 0, 0, 1], 3000)),
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
            "0.1.2.3",
            "::",
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "fd20:ce::254",
            "64:ff9b:1::a00:1",
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
        // A name is refused without the address it resolved to: the broker's DNS is not
        // read through its refusals.
        let msg = e.resolve("localhost", 1).await.unwrap_err().to_string();
        assert!(
            msg.starts_with("localhost is ") && !msg.contains("127.0.0.1") && !msg.contains("::1"),
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
        let (nets, hosts) = parse_allow_list(
            "byo_allow",
            &["127.0.0.0/8".into(), "::1".into(), "*.Browsers.Internal".into()],
        )
        .unwrap();
        assert_eq!(nets.len(), 2);
        assert_eq!(hosts, vec!["*.browsers.internal"]);
        let errors = parse_allow_list("byo_allow", &["10.0.0.0/33".into(), "bad host!".into()]).unwrap_err();
        assert_eq!(errors.len(), 2);
        let patterns = vec!["*.browsers.internal".to_owned()];
        assert!(host_matches(&patterns, "a.browsers.internal"));
        assert!(host_matches(&patterns, "A.Browsers.Internal."));
        assert!(!host_matches(&patterns, "browsers.internal"));
        assert!(!host_matches(&patterns, "evilbrowsers.internal"));
    }

    fn browsers(deny: &[&str], allow: &[&str]) -> Egress {
        let deny: Vec<String> = deny.iter().map(|s| s.to_string()).collect();
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        Egress::for_browsers(
            &deny,
            &allow,
            Arc::new(Mutex::new([41000].into_iter().collect())),
            SocketAddr::from(([127, 0, 0, 1], 3000)),
            Duration::from_secs(2),
        )
    }

    fn defaults(allow: &[&str]) -> Egress {
        browsers(&DEFAULT_BROWSER_DENY, allow)
    }

    #[tokio::test]
    async fn by_default_pages_reach_only_the_public_internet() {
        let e = defaults(&[]);
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:0:7f00:1",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "::ffff:10.0.0.1",
            "100.64.0.1",
            "169.254.1.1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "64:ff9b:1::a00:1",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "fd00:ec2::254",
            "fd20:ce::254",
            "100.100.100.200",
        ] {
            let r = e.resolve(host, 8080).await;
            assert!(matches!(r, Err(EgressError::Forbidden { .. })), "{host}: {r:?}");
        }
        for name in ["localhost", "a.localhost", "LOCALHOST.", "metadata.google.internal"] {
            let r = e.resolve(name, 80).await;
            assert!(matches!(r, Err(EgressError::ForbiddenName { .. })), "{name}: {r:?}");
        }
        assert!(e.resolve("93.184.216.34", 80).await.is_ok());
        assert!(e.resolve("2606:4700::1", 443).await.is_ok());
        assert!(e.resolve("::ffff:93.184.216.34", 80).await.is_ok());
        let msg = e.resolve("0.0.0.0", 80).await.unwrap_err().to_string();
        assert!(
            msg.contains("unspecified") && msg.contains("browser_egress_allow"),
            "{msg}"
        );
        // Also spelled out: `loopback` takes `0.0.0.0` and `[::]` with it.
        let strict = browsers(&["loopback"], &[]);
        for host in ["0.0.0.0", "::", "::ffff:127.0.0.1", "localhost"] {
            assert!(strict.resolve(host, 8080).await.is_err(), "{host}");
        }
    }

    #[tokio::test]
    async fn the_local_opt_in_opens_loopback_and_nothing_else() {
        let local = defaults(&["loopback"]);
        for host in ["127.0.0.1", "::1", "0.0.0.0", "localhost", "::ffff:127.0.0.1"] {
            assert!(local.resolve(host, 8080).await.is_ok(), "{host}");
        }
        for host in ["10.0.0.1", "169.254.169.254", "fd00:ec2::254"] {
            assert!(local.resolve(host, 8080).await.is_err(), "{host}");
        }
        // Never the broker or its browsers, by any spelling of this host.
        for host in ["127.0.0.1", "0.0.0.0", "::", "::ffff:127.0.0.1", "localhost"] {
            assert!(
                matches!(local.resolve(host, 41000).await, Err(EgressError::OwnBrowser { .. })),
                "{host}"
            );
        }
        // Metadata opens only to its exact address, never by keyword.
        assert!(!check_browser_lists(&[], &["metadata".into()]).is_empty());
        assert!(check_browser_lists(&[], &["loopback".into(), "private".into(), "10.0.0.0/8".into()]).is_empty());
        let pinned = browsers(&["loopback", "127.0.0.2/32"], &["loopback"]);
        assert!(pinned.resolve("127.0.0.1", 8080).await.is_ok());
        assert!(pinned.resolve("127.0.0.2", 8080).await.is_err());
        let exact = defaults(&["fd00:ec2::254"]);
        assert!(exact.resolve("fd00:ec2::254", 80).await.is_ok());
    }

    #[tokio::test]
    async fn browsers_are_refused_what_the_deny_list_names() {
        let defaults = browsers(&["link-local", "metadata"], &[]);
        for (host, port) in [
            ("169.254.169.254", 80),
            ("169.254.7.7", 80),
            ("100.100.100.200", 80),
            ("fe80::1", 80),
        ] {
            let r = defaults.resolve(host, port).await;
            assert!(matches!(r, Err(EgressError::Forbidden { .. })), "{host}: {r:?}");
        }
        assert!(matches!(
            defaults.resolve("metadata.google.internal", 80).await,
            Err(EgressError::ForbiddenName { .. })
        ));
        // Loopback and private are open by default, but never the broker or its browsers.
        assert!(defaults.resolve("127.0.0.1", 8080).await.is_ok());
        assert!(defaults.resolve("10.1.2.3", 80).await.is_ok());
        for (host, port) in [("127.0.0.1", 3000), ("127.0.0.1", 41000), ("localhost", 41000)] {
            assert!(
                matches!(defaults.resolve(host, port).await, Err(EgressError::OwnBrowser { .. })),
                "{host}:{port}"
            );
        }
        let strict = browsers(
            &["link-local", "private", "loopback", "203.0.113.0/24", "*.corp.example"],
            &["10.9.0.0/16"],
        );
        assert!(strict.resolve("10.1.2.3", 80).await.is_err());
        assert!(strict.resolve("10.9.1.1", 80).await.is_ok());
        assert!(strict.resolve("127.0.0.1", 8080).await.is_err());
        assert!(strict.resolve("203.0.113.9", 443).await.is_err());
        assert!(matches!(
            strict.resolve("db.corp.example", 80).await,
            Err(EgressError::ForbiddenName { .. })
        ));
        let msg = strict.resolve("10.1.2.3", 80).await.unwrap_err().to_string();
        assert!(msg.contains("browser_egress_allow"), "{msg}");
        assert_eq!(
            check_browser_lists(&["private".into(), "nonsense!".into()], &["x y".into()]).len(),
            2
        );
    }
}
