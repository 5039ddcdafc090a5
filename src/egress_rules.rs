//! The address rules of the egress policies, as plain data: the special classes of
//! addresses (loopback, private, metadata…), how an IP is classed (IPv4 carried in IPv6 as
//! the IPv4 it carries), and the deny and allow lists of the configuration parsed into
//! rules. `browser::egress` enforces them on resolved connections; `config` checks the
//! lists with the same parser.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Kinds of special addresses a policy refuses by keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Class {
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
    pub(crate) const ALL: [Class; 7] = [
        Class::Metadata,
        Class::Loopback,
        Class::Unspecified,
        Class::Private,
        Class::LinkLocal,
        Class::SharedNat,
        Class::Reserved,
    ];

    pub(crate) fn describe(self) -> &'static str {
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
    pub(crate) fn keyword(self) -> &'static str {
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
    pub(crate) fn named(keyword: &str) -> Vec<Class> {
        match Class::ALL.into_iter().find(|c| c.keyword() == keyword) {
            Some(Class::Loopback) => vec![Class::Loopback, Class::Unspecified],
            Some(class) => vec![class],
            None => Vec::new(),
        }
    }

    /// Names that mean this class whatever a lookup answers (`*.localhost` may not resolve
    /// here, yet Chrome and RFC 6761 take it as loopback).
    pub(crate) fn names(self) -> &'static [&'static str] {
        match self {
            Class::Metadata => METADATA_NAMES,
            Class::Loopback => LOOPBACK_NAMES,
            _ => &[],
        }
    }
}

/// What `browser_egress_deny` refuses when it is not set: everything but the public
/// internet (a shared service's pages must not reach the broker's host or its network).
pub(crate) const DEFAULT_BROWSER_DENY: [&str; 5] = ["loopback", "private", "link-local", "shared", "metadata"];

/// Loopback by name.
pub(crate) const LOOPBACK_NAMES: &[&str] = &["localhost", "*.localhost"];

/// The cloud providers' metadata services by name (their addresses are [`Class::Metadata`]).
pub(crate) const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// What a policy refuses and opens, parsed from a deny and an allow list.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    pub(crate) deny_classes: Vec<Class>,
    pub(crate) deny_nets: Vec<IpNet>,
    pub(crate) deny_hosts: Vec<String>,
    /// Classes opened by keyword (`browser_egress_allow = ["loopback"]`); never metadata.
    pub(crate) allow_classes: Vec<Class>,
    pub(crate) allow_nets: Vec<IpNet>,
    pub(crate) allow_hosts: Vec<String>,
}

/// A CIDR, an IP address or a host name (`*.suffix` for every name under it).
pub(crate) enum Entry {
    Net(IpNet),
    Host(String),
}

pub(crate) fn parse_entry(entry: &str) -> Option<Entry> {
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
pub(crate) fn parse_allow_list(setting: &str, entries: &[String]) -> Result<(Vec<IpNet>, Vec<String>), Vec<String>> {
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
pub(crate) fn parse_deny_list(entries: &[String]) -> Result<Rules, Vec<String>> {
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

pub(crate) const KEYWORDS: &str = "metadata, link-local, loopback, unspecified, private, shared, reserved";

/// Parses `browser_egress_allow`: what `parse_allow_list` takes, and the keywords of the
/// deny list but `metadata` (a metadata address opens only to its exact entry).
pub(crate) fn parse_browser_allow_list(entries: &[String]) -> Result<Rules, Vec<String>> {
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
pub(crate) fn check_browser_lists(deny: &[String], allow: &[String]) -> Vec<String> {
    let mut errors = parse_deny_list(deny).err().unwrap_or_default();
    errors.extend(parse_browser_allow_list(allow).err().unwrap_or_default());
    errors
}

pub(crate) fn is_host_pattern(s: &str) -> bool {
    let name = s.strip_prefix("*.").unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Whether `host` matches one of `patterns` (`*.suffix` matches names under the suffix).
pub(crate) fn host_matches(patterns: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    patterns.iter().any(|pattern| match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => *pattern == host,
    })
}

pub(crate) const METADATA: &str = "a cloud metadata address";

/// IPv4 carried in IPv6 is judged as the IPv4 it carries: mapped (`::ffff:a.b.c.d`),
/// translated (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and the deprecated
/// compatible form (`::a.b.c.d`, which Linux routes as IPv4 would be).
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
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
pub(crate) const METADATA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
];

/// Which special kind of address `ip` is, or `None` for an ordinary public address.
pub(crate) fn restricted_class(ip: IpAddr) -> Option<Class> {
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
