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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EgressError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{host} is {ip}, {class}, which this broker does not connect to unless it is allowed ({setting})")]
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

/// Kinds of special addresses a policy refuses by keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Metadata,
    Loopback,
    /// `0.0.0.0/8` and `::`: a connection to them reaches this host on Linux, as loopback does.
    Unspecified,
    Private,
    LinkLocal,
    SharedNat,
    Reserved,
}

impl Class {
    const ALL: [Class; 7] = [
        Class::Metadata,
        Class::Loopback,
        Class::Unspecified,
        Class::Private,
        Class::LinkLocal,
        Class::SharedNat,
        Class::Reserved,
    ];

    fn describe(self) -> &'static str {
        match self {
            Class::Metadata => METADATA,
            Class::Loopback => "a loopback address",
            Class::Unspecified => "an unspecified address (this host)",
            Class::Private => "a private address",
            Class::LinkLocal => "a link-local address",
            Class::SharedNat => "a shared (carrier-grade NAT) address",
            Class::Reserved => "a reserved address",
        }
    }

    /// The keyword naming the class in `browser_egress_deny`.
    fn keyword(self) -> &'static str {
        match self {
            Class::Metadata => "metadata",
            Class::Loopback => "loopback",
            Class::Unspecified => "unspecified",
            Class::Private => "private",
            Class::LinkLocal => "link-local",
            Class::SharedNat => "shared",
            Class::Reserved => "reserved",
        }
    }

    /// The classes a keyword names: `loopback` takes the unspecified addresses with it,
    /// since a connection to `0.0.0.0` or `[::]` reaches this host too.
    fn named(keyword: &str) -> Vec<Class> {
        match Class::ALL.into_iter().find(|c| c.keyword() == keyword) {
            Some(Class::Loopback) => vec![Class::Loopback, Class::Unspecified],
            Some(class) => vec![class],
            None => Vec::new(),
        }
    }

    /// Names that mean this class whatever a lookup answers (`*.localhost` may not resolve
    /// here, yet Chrome and RFC 6761 take it as loopback).
    fn names(self) -> &'static [&'static str] {
        match self {
            Class::Metadata => METADATA_NAMES,
            Class::Loopback => LOOPBACK_NAMES,
            _ => &[],
        }
    }
}

/// What `browser_egress_deny` refuses when it is not set: everything but the public
/// internet (a shared service's pages must not reach the broker's host or its network).
pub const DEFAULT_BROWSER_DENY: [&str; 5] = ["loopback", "private", "link-local", "shared", "metadata"];

/// Loopback by name.
const LOOPBACK_NAMES: &[&str] = &["localhost", "*.localhost"];

/// The cloud providers' metadata services by name (their addresses are [`Class::Metadata`]).
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// What a policy refuses and opens, parsed from a deny and an allow list.
#[derive(Debug, Default)]
struct Rules {
    deny_classes: Vec<Class>,
    deny_nets: Vec<IpNet>,
    deny_hosts: Vec<String>,
    /// Classes opened by keyword (`browser_egress_allow = ["loopback"]`); never metadata.
    allow_classes: Vec<Class>,
    allow_nets: Vec<IpNet>,
    allow_hosts: Vec<String>,
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

/// A CIDR, an IP address or a host name (`*.suffix` for every name under it).
enum Entry {
    Net(IpNet),
    Host(String),
}

fn parse_entry(entry: &str) -> Option<Entry> {
    let e = entry.trim();
    if let Ok(net) = e.parse::<IpNet>() {
        Some(Entry::Net(net.trunc()))
    } else if let Ok(ip) = e.parse::<IpAddr>() {
        Some(Entry::Net(IpNet::from(ip)))
    } else if is_host_pattern(e) {
        Some(Entry::Host(e.to_ascii_lowercase()))
    } else {
        None
    }
}

/// Parses the entries of an allow list (`setting` names it in errors); answers the bad
/// ones as errors.
pub fn parse_allow_list(setting: &str, entries: &[String]) -> Result<(Vec<IpNet>, Vec<String>), Vec<String>> {
    let mut nets = Vec::new();
    let mut hosts = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        match parse_entry(entry) {
            Some(Entry::Net(net)) => nets.push(net),
            Some(Entry::Host(host)) => hosts.push(host),
            None => errors.push(format!(
                "{setting}: {entry:?} is neither a CIDR, an IP address nor a host name"
            )),
        }
    }
    if errors.is_empty() {
        Ok((nets, hosts))
    } else {
        Err(errors)
    }
}

/// Parses `browser_egress_deny`: keywords (`metadata`, `link-local`, `loopback`,
/// `unspecified`, `private`, `shared`, `reserved`), CIDRs, addresses and host names.
fn parse_deny_list(entries: &[String]) -> Result<Rules, Vec<String>> {
    let mut classes = Vec::new();
    let mut nets = Vec::new();
    let mut hosts = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        let e = entry.trim().to_ascii_lowercase();
        let named = Class::named(&e);
        if !named.is_empty() {
            for class in named {
                hosts.extend(class.names().iter().map(|n| n.to_string()));
                classes.push(class);
            }
        } else {
            match parse_entry(&e) {
                Some(Entry::Net(net)) => nets.push(net),
                Some(Entry::Host(host)) => hosts.push(host),
                None => errors.push(format!(
                    "browser_egress_deny: {entry:?} is neither a keyword ({KEYWORDS}), a CIDR, an IP address \
                     nor a host name"
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(Rules {
            deny_classes: classes,
            deny_nets: nets,
            deny_hosts: hosts,
            ..Rules::default()
        })
    } else {
        Err(errors)
    }
}

const KEYWORDS: &str = "metadata, link-local, loopback, unspecified, private, shared, reserved";

/// Parses `browser_egress_allow`: what `parse_allow_list` takes, and the keywords of the
/// deny list but `metadata` (a metadata address opens only to its exact entry).
fn parse_browser_allow_list(entries: &[String]) -> Result<Rules, Vec<String>> {
    let mut classes = Vec::new();
    let mut hosts = Vec::new();
    let mut rest = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        let e = entry.trim().to_ascii_lowercase();
        if e == Class::Metadata.keyword() {
            errors.push(
                "browser_egress_allow: \"metadata\" cannot be opened by keyword; list the exact address \
                 (e.g. 169.254.169.254) if a page must reach it"
                    .to_owned(),
            );
            continue;
        }
        let named = Class::named(&e);
        if named.is_empty() {
            rest.push(entry.clone());
        }
        for class in named {
            hosts.extend(class.names().iter().map(|n| n.to_string()));
            classes.push(class);
        }
    }
    match parse_allow_list("browser_egress_allow", &rest) {
        Ok((nets, more_hosts)) if errors.is_empty() => {
            hosts.extend(more_hosts);
            Ok(Rules {
                allow_classes: classes,
                allow_nets: nets,
                allow_hosts: hosts,
                ..Rules::default()
            })
        }
        Ok(_) => Err(errors),
        Err(bad) => {
            errors.extend(bad);
            Err(errors)
        }
    }
}

/// Checks `browser_egress_deny` and `browser_egress_allow`; answers every bad entry.
pub fn check_browser_lists(deny: &[String], allow: &[String]) -> Vec<String> {
    let mut errors = parse_deny_list(deny).err().unwrap_or_default();
    errors.extend(parse_browser_allow_list(allow).err().unwrap_or_default());
    errors
}

fn is_host_pattern(s: &str) -> bool {
    let name = s.strip_prefix("*.").unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Whether `host` matches one of `patterns` (`*.suffix` matches names under the suffix).
pub fn host_matches(patterns: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    patterns.iter().any(|pattern| match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => *pattern == host,
    })
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
        for addr in &addrs {
            self.check(host, *addr, host_allowed)?;
        }
        Ok(addrs)
    }

    fn check(&self, host: &str, addr: SocketAddr, host_allowed: bool) -> Result<(), EgressError> {
        let ip = canonical(addr.ip());
        let class = restricted_class(ip);
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

const METADATA: &str = "a cloud metadata address";

/// IPv4 carried in IPv6 is judged as the IPv4 it carries: mapped (`::ffff:a.b.c.d`),
/// translated (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and the deprecated
/// compatible form (`::a.b.c.d`, which Linux routes as IPv4 would be).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let o = v6.octets();
            let carried = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
            let carries_v4 = s[..6] == [0, 0, 0, 0, 0, 0xffff]
                || s[..6] == [0, 0, 0, 0, 0xffff, 0]
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || (s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_unspecified() && !v6.is_loopback());
            if carries_v4 {
                IpAddr::V4(carried)
            } else {
                IpAddr::V6(v6)
            }
        }
        v4 => v4,
    }
}

/// The IPv6 addresses of cloud metadata services (AWS, GCP).
const METADATA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
];

/// Which special kind of address `ip` is, or `None` for an ordinary public address.
fn restricted_class(ip: IpAddr) -> Option<Class> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4 == Ipv4Addr::new(169, 254, 169, 254) || v4 == Ipv4Addr::new(100, 100, 100, 200) {
                Some(Class::Metadata)
            } else if v4.is_loopback() {
                Some(Class::Loopback)
            } else if o[0] == 0 {
                Some(Class::Unspecified)
            } else if v4.is_private() {
                Some(Class::Private)
            } else if v4.is_link_local() {
                Some(Class::LinkLocal)
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some(Class::SharedNat)
            } else if v4.is_broadcast() || v4.is_multicast() || o[0] >= 240 || (o[0] == 198 && (o[1] & 0xfe) == 18) {
                Some(Class::Reserved)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if METADATA_V6.contains(&v6) {
                Some(Class::Metadata)
            } else if v6.is_loopback() {
                Some(Class::Loopback)
            } else if v6.is_unspecified() {
                Some(Class::Unspecified)
            } else if v6.is_multicast() {
                Some(Class::Reserved)
            } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 || s[..3] == [0x64, 0xff9b, 1] {
                // Unique-local, the deprecated site-local, and local-use NAT64 (RFC 8215),
                // whose translator reaches a private IPv4 network.
                Some(Class::Private)
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some(Class::LinkLocal)
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
