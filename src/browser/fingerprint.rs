//! Coherent desktop fingerprints (`fingerprint: {"os": …}` on create): one row of real-world
//! readings (`fingerprints.json`, reduced from the Apify fingerprint-generator's data by
//! `scripts/fingerprint-data.sh`; Apache-2.0, `fingerprints.LICENSE`) picked by a seed,
//! with the user agent and client hints of desktop Chrome on that OS. What it sets on each
//! target, through DevTools where DevTools can and a small script where it cannot, is
//! [`commands`] and the part of the page script (`page_script.rs`) configured by
//! [`patch_config`]; the identity keeper sends them.

use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::stealth;
use crate::values::{Fingerprint, Screen};

/// How far back a `browser_version` may go from the browser's own major version: further
/// back, the features a page can test contradict the version it claims.
pub(crate) const MAX_VERSIONS_BACK: u32 = 10;

/// The desktop systems a fingerprint can show.
pub(crate) const OSES: [&str; 3] = ["windows", "macos", "linux"];

/// One row of the table: what one real machine showed.
#[derive(Debug, Clone, Deserialize)]
struct Row {
    weight: u64,
    platform: String,
    platform_version: String,
    architecture: String,
    bitness: String,
    hardware_concurrency: u32,
    device_memory: f64,
    screen: [u32; 2],
    device_pixel_ratio: f64,
    webgl_vendor: String,
    webgl_renderer: String,
}

#[derive(Deserialize)]
struct Table {
    windows: Vec<Row>,
    macos: Vec<Row>,
    linux: Vec<Row>,
}

static TABLE: LazyLock<Table> =
    LazyLock::new(|| serde_json::from_str(include_str!("fingerprints.json")).expect("fingerprints.json is valid"));

fn rows(os: &str) -> &'static [Row] {
    match os {
        "windows" => &TABLE.windows,
        "macos" => &TABLE.macos,
        _ => &TABLE.linux,
    }
}

/// A create's `fingerprint`, as validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FingerprintRequest {
    pub os: String,
    /// Chrome's major version to show; the browser's own when none.
    pub browser_version: Option<u32>,
    /// Picks the row; a random one when none.
    pub seed: Option<u64>,
    /// Only rows with this many cores / this much memory.
    pub cores: Option<u32>,
    pub memory: Option<f64>,
}

/// Reads a create's `fingerprint` object; the message names the bad field.
pub(crate) fn parse(v: &Value) -> Result<FingerprintRequest, String> {
    let obj = v
        .as_object()
        .ok_or("fingerprint must be an object such as {\"os\": \"windows\"}")?;
    if let Some(key) = obj
        .keys()
        .find(|k| !["os", "browser_version", "hardware"].contains(&k.as_str()))
    {
        return Err(format!(
            "fingerprint.{} is not a fingerprint field (os, browser_version, hardware)",
            short(key)
        ));
    }
    let os = match obj.get("os").and_then(Value::as_str) {
        Some(os) if OSES.contains(&os) => os.to_owned(),
        _ => return Err("fingerprint.os must be \"windows\", \"macos\" or \"linux\"".into()),
    };
    let browser_version = match obj.get("browser_version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| s.parse::<u32>().ok().filter(|_| s.len() <= 3 && !s.starts_with('0')))
                .or_else(|| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .filter(|n| (1..=999).contains(n))
                .ok_or("fingerprint.browser_version must be a Chrome major version such as \"156\"")?,
        ),
    };
    let mut request = FingerprintRequest {
        os,
        browser_version,
        ..FingerprintRequest::default()
    };
    match obj.get("hardware") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => request.seed = Some(n.as_u64().ok_or(HARDWARE)?),
        Some(Value::Object(h)) => read_hardware(&mut request, h)?,
        Some(_) => return Err(HARDWARE.into()),
    }
    Ok(request)
}

const HARDWARE: &str = "fingerprint.hardware must be a seed (a whole number) or an object with seed, cores and memory";

fn read_hardware(request: &mut FingerprintRequest, h: &Map<String, Value>) -> Result<(), String> {
    if let Some(key) = h.keys().find(|k| !["seed", "cores", "memory"].contains(&k.as_str())) {
        return Err(format!(
            "fingerprint.hardware.{} is not a hardware field (seed, cores, memory)",
            short(key)
        ));
    }
    request.seed = h.get("seed").map(|s| s.as_u64().ok_or(HARDWARE)).transpose()?;
    let table = rows(&request.os);
    if let Some(cores) = h.get("cores") {
        let known: Vec<u32> = distinct(table.iter().map(|r| r.hardware_concurrency));
        request.cores = Some(
            cores
                .as_u64()
                .and_then(|c| known.iter().copied().find(|k| u64::from(*k) == c))
                .ok_or_else(|| format!("fingerprint.hardware.cores must be one of {known:?} for {}", request.os))?,
        );
    }
    if let Some(memory) = h.get("memory") {
        let known: Vec<f64> = distinct(table.iter().map(|r| r.device_memory));
        request.memory = Some(
            memory
                .as_f64()
                .and_then(|m| known.iter().copied().find(|k| *k == m))
                .ok_or_else(|| {
                    format!(
                        "fingerprint.hardware.memory must be one of {known:?} for {}",
                        request.os
                    )
                })?,
        );
    }
    if !table.iter().any(|r| {
        request.cores.is_none_or(|c| c == r.hardware_concurrency) && request.memory.is_none_or(|m| m == r.device_memory)
    }) {
        return Err(format!(
            "no {} machine in the fingerprint table has that many cores with that much memory",
            request.os
        ));
    }
    Ok(())
}

fn distinct<T: PartialOrd + Copy>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut all: Vec<T> = Vec::new();
    for v in values {
        if !all.contains(&v) {
            all.push(v);
        }
    }
    all.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    all
}

/// A client's key, shortened for an error message.
fn short(key: &str) -> String {
    key.chars().take(40).collect()
}

/// The browser's own version, `156.0.8078.114`, split.
pub(crate) struct OwnVersion<'a> {
    pub(crate) major: u32,
    pub(crate) full: &'a str,
}

impl<'a> OwnVersion<'a> {
    pub(crate) fn of(full: &'a str) -> Option<OwnVersion<'a>> {
        Some(OwnVersion {
            major: full.split('.').next()?.parse().ok()?,
            full,
        })
    }

    /// The major version to show and its full version; an error for one this browser
    /// cannot pass for.
    pub(crate) fn claim(&self, asked: Option<u32>) -> Result<(u32, String), String> {
        let major = asked.unwrap_or(self.major);
        if major > self.major || major + MAX_VERSIONS_BACK < self.major {
            return Err(format!(
                "fingerprint.browser_version must be from {} to {} (this browser is Chrome {})",
                self.major.saturating_sub(MAX_VERSIONS_BACK),
                self.major,
                self.major
            ));
        }
        // An older major's build is not known here: its full version is the reduced one.
        let full = if major == self.major {
            self.full.to_owned()
        } else {
            format!("{major}.0.0.0")
        };
        Ok((major, full))
    }
}

/// Mixes a seed into a well-spread number (splitmix64): neighbouring seeds pick unrelated
/// rows.
pub(crate) fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Brands and full version list of Google Chrome `major` (`full`), in Chrome's order for
/// that version (`ShuffleBrandList`: GREASE, Chromium, Google Chrome, permuted by the major).
pub(crate) fn chrome_brands(major: u32, full: &str) -> (Value, Value) {
    let (grease, grease_version) = stealth::greased_brand(major);
    let list = |chrome: &str, grease_version: &str| {
        let input = [
            json!({ "brand": grease, "version": grease_version }),
            json!({ "brand": "Chromium", "version": chrome }),
            json!({ "brand": "Google Chrome", "version": chrome }),
        ];
        const ORDERS: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let order = ORDERS[major as usize % 6];
        let mut out = vec![Value::Null; 3];
        for (i, brand) in input.into_iter().enumerate() {
            out[order[i]] = brand;
        }
        Value::Array(out)
    };
    (
        list(&major.to_string(), &grease_version),
        list(full, &format!("{grease_version}.0.0.0")),
    )
}

/// Picks the fingerprint for `request`: a row of the table by `seed` (among those that
/// match its hardware and whose screen holds the session's `viewport`), shown as Chrome of
/// the version asked.
pub(crate) fn pick(
    request: &FingerprintRequest,
    own: &OwnVersion,
    viewport: Screen,
    seed: u64,
) -> Result<Fingerprint, String> {
    let (major, full) = own.claim(request.browser_version)?;
    let seed = request.seed.unwrap_or(seed);
    let matching: Vec<&Row> = rows(&request.os)
        .iter()
        .filter(|r| request.cores.is_none_or(|c| c == r.hardware_concurrency))
        .filter(|r| request.memory.is_none_or(|m| m == r.device_memory))
        .collect();
    let holding: Vec<&Row> = matching
        .iter()
        .copied()
        .filter(|r| r.screen[0] >= viewport.width && r.screen[1] >= viewport.height)
        .collect();
    // No screen that large: the window fills the screen.
    let (candidates, screen_fits) = if holding.is_empty() {
        (matching, false)
    } else {
        (holding, true)
    };
    let total: u64 = candidates.iter().map(|r| r.weight).sum();
    let mut at = mix(seed) % total.max(1);
    let row = candidates
        .iter()
        .find(|r| {
            if at < r.weight {
                return true;
            }
            at -= r.weight;
            false
        })
        .or(candidates.first())
        .ok_or("the fingerprint table has no such machine")?;
    let system = match request.os.as_str() {
        "windows" => "Windows NT 10.0; Win64; x64",
        "macos" => "Macintosh; Intel Mac OS X 10_15_7",
        _ => "X11; Linux x86_64",
    };
    let user_agent =
        format!("Mozilla/5.0 ({system}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.0.0 Safari/537.36");
    let (brands, full_list) = chrome_brands(major, &full);
    let client_hints = json!({
        "brands": brands,
        "fullVersionList": full_list,
        "fullVersion": full,
        "platform": stealth::platform(&user_agent),
        "platformVersion": row.platform_version,
        "architecture": row.architecture,
        "bitness": row.bitness,
        "model": "",
        "mobile": false,
        "wow64": false,
    });
    Ok(Fingerprint {
        os: request.os.clone(),
        device: None,
        seed,
        browser_version: major,
        user_agent,
        platform: row.platform.clone(),
        vendor: None,
        client_hints: Some(client_hints),
        hardware_concurrency: row.hardware_concurrency,
        device_memory: Some(row.device_memory),
        screen: if screen_fits {
            Screen {
                width: row.screen[0],
                height: row.screen[1],
            }
        } else {
            viewport
        },
        viewport: None,
        device_pixel_ratio: row.device_pixel_ratio,
        mobile: false,
        max_touch_points: 0,
        webgl_vendor: row.webgl_vendor.clone(),
        webgl_renderer: row.webgl_renderer.clone(),
    })
}

/// What the fingerprint's part of the page script (`fingerprint_patch.js`) sets on a
/// target of `kind`.
pub(crate) fn patch_config(fp: &Fingerprint, kind: &str) -> Value {
    let worker = !matches!(kind, "page" | "iframe");
    // An out-of-process frame: the page's device metrics do not reach it.
    let screen = (kind == "iframe").then(|| json!([fp.screen.width, fp.screen.height]));
    // A service worker's navigator.userAgent is the launch flag's, which no override reaches.
    let user_agent = (kind == "service_worker").then_some(fp.user_agent.as_str());
    json!({
        "userAgent": user_agent,
        "screen": screen,
        "dpr": fp.device_pixel_ratio,
        "platform": fp.platform,
        "vendor": fp.vendor,
        "worker": worker,
        "hardwareConcurrency": fp.hardware_concurrency,
        "deviceMemory": fp.device_memory,
        "noClientHints": fp.client_hints.is_none(),
        "webglVendor": fp.webgl_vendor,
        "webglRenderer": fp.webgl_renderer,
    })
}

/// The DevTools commands that put `fp` on a newly attached page or frame (`kind`), sent
/// before it runs. The user agent and client hints are the keeper's own override; what
/// no command reaches is the page script's ([`patch_config`]), in workers too.
pub(crate) fn commands(fp: &Fingerprint, kind: &str) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    if !matches!(kind, "page" | "iframe") {
        return out;
    }
    out.push((
        "Emulation.setHardwareConcurrencyOverride",
        json!({ "hardwareConcurrency": fp.hardware_concurrency }),
    ));
    if kind == "page" {
        let view = fp.viewport.unwrap_or(Screen { width: 0, height: 0 });
        let portrait = fp.screen.height >= fp.screen.width;
        out.push((
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": view.width,
                "height": view.height,
                "deviceScaleFactor": fp.device_pixel_ratio,
                "mobile": fp.mobile,
                "screenWidth": fp.screen.width,
                "screenHeight": fp.screen.height,
                "screenOrientation": if portrait {
                    json!({ "type": "portraitPrimary", "angle": 0 })
                } else {
                    json!({ "type": "landscapePrimary", "angle": 0 })
                },
            }),
        ));
    }
    if fp.max_touch_points > 0 {
        out.push((
            "Emulation.setTouchEmulationEnabled",
            json!({ "enabled": true, "maxTouchPoints": fp.max_touch_points }),
        ));
    }
    out
}

/// `Accept-Language` for a locale, as a person's Chrome sends it: the tag, then its
/// language alone (`de-DE,de;q=0.9`); `navigator.languages` follows it.
pub(crate) fn accept_language(locale: &str) -> String {
    match locale.split_once('-') {
        Some((language, _)) => format!("{locale},{language};q=0.9"),
        None => locale.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "156.0.8078.114";
    const VIEW: Screen = Screen {
        width: 1280,
        height: 720,
    };

    fn request(v: Value) -> Result<FingerprintRequest, String> {
        parse(&v)
    }

    #[test]
    fn the_table_is_real_and_complete() {
        for os in OSES {
            let table = rows(os);
            assert!(table.len() >= 10, "{os}: {} rows", table.len());
            for r in table {
                assert!(!r.webgl_renderer.contains("SwiftShader"), "{os}: {}", r.webgl_renderer);
                assert!(r.hardware_concurrency > 0 && r.device_memory > 0.0);
            }
        }
        assert!(rows("macos").iter().all(|r| r.platform == "MacIntel"));
        assert!(rows("windows").iter().all(|r| r.platform == "Win32"));
    }

    #[test]
    fn a_seed_picks_the_same_coherent_fingerprint() {
        let own = OwnVersion::of(OWN).unwrap();
        let r = request(json!({"os": "windows"})).unwrap();
        let a = pick(&r, &own, VIEW, 7).unwrap();
        assert_eq!(a, pick(&r, &own, VIEW, 7).unwrap());
        assert!(a.user_agent.contains("Windows NT 10.0") && a.user_agent.contains("Chrome/156.0.0.0"));
        assert_eq!(a.platform, "Win32");
        let hints = a.client_hints.as_ref().unwrap();
        assert_eq!(hints["platform"], "Windows");
        assert_eq!(hints["fullVersion"], OWN);
        assert!(a.screen.width >= VIEW.width && a.screen.height >= VIEW.height);
        // Seeds spread over the table.
        let renderers: std::collections::HashSet<String> = (0..50)
            .map(|s| pick(&r, &own, VIEW, s).unwrap().webgl_renderer)
            .collect();
        assert!(renderers.len() > 3, "{renderers:?}");
        let mac = pick(&request(json!({"os": "macos", "hardware": 3})).unwrap(), &own, VIEW, 0).unwrap();
        assert_eq!(mac.seed, 3);
        assert_eq!(mac.client_hints.unwrap()["platform"], "macOS");
    }

    #[test]
    fn brands_follow_chromes_order() {
        // As Google Chrome 131 and 120 send them.
        let (b, _) = chrome_brands(131, "131.0.6778.86");
        let names: Vec<&str> = b
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["brand"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Google Chrome", "Chromium", "Not_A Brand"]);
        let (b, _) = chrome_brands(120, "120.0.6099.71");
        let names: Vec<&str> = b
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["brand"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Not_A Brand", "Chromium", "Google Chrome"]);
    }

    #[test]
    fn hostile_requests_are_refused() {
        for bad in [
            json!("windows"),
            json!({}),
            json!({"os": "solaris"}),
            json!({"os": "windows", "browser_version": "1e9"}),
            json!({"os": "windows", "browser_version": -1}),
            json!({"os": "windows", "browser_version": "0156"}),
            json!({"os": "windows", "evil": 1}),
            json!({"os": "windows", "hardware": {"cores": 4096}}),
            json!({"os": "windows", "hardware": {"memory": 0.001}}),
            json!({"os": "windows", "hardware": {"gpu": "x"}}),
            json!({"os": "windows", "hardware": "x"}),
            json!({"os": "windows", "hardware": -5}),
        ] {
            assert!(request(bad.clone()).is_err(), "{bad}");
        }
        let own = OwnVersion::of(OWN).unwrap();
        assert!(own.claim(Some(157)).is_err());
        assert!(own.claim(Some(100)).is_err());
        assert_eq!(own.claim(Some(150)).unwrap(), (150, "150.0.0.0".into()));
        assert_eq!(accept_language("de-DE"), "de-DE,de;q=0.9");
    }
}
