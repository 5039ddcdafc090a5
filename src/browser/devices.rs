//! Phones and tablets a session can pass for (`device: "Pixel 8"` on create). The sizes,
//! pixel ratios and iOS user agents are Playwright's and Puppeteer's device descriptors
//! (Apache-2.0: `playwright-core` 1.64 `deviceDescriptorsSource`, `puppeteer-core` 24
//! `KnownDevices`); Android devices show the reduced user agent Chrome on Android sends
//! (`Linux; Android 10; K`, the model and version in client hints only), the session
//! browser's own Chrome version, and the GPU each phone's chip has.
//!
//! An iOS device shows Safari's user agent, `navigator.platform`/`vendor` and no
//! `navigator.userAgentData` (Safari has none); the engine stays Blink, so a page that
//! tests WebKit-only features can tell.

use serde_json::{Value, json};

use super::fingerprint::{OwnVersion, chrome_brands};
use crate::values::{Fingerprint, Screen};

/// One device's numbers.
struct Device {
    name: &'static str,
    /// `android` or `ios`.
    os: &'static str,
    /// Android version (`14.0.0`, for client hints) or the whole Safari user agent (iOS).
    system: &'static str,
    viewport: (u32, u32),
    screen: (u32, u32),
    dpr: f64,
    tablet: bool,
    cores: u32,
    memory: Option<f64>,
    gpu: (&'static str, &'static str),
}

const IPHONE_17_5: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const IPAD_12_2: &str = "Mozilla/5.0 (iPad; CPU OS 12_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/15.4 Mobile/15E148 Safari/604.1";
const APPLE_GPU: (&str, &str) = ("Apple Inc.", "Apple GPU");
const MALI_G715: (&str, &str) = ("ARM", "Mali-G715");
const MALI_G710: (&str, &str) = ("ARM", "Mali-G710");
const ADRENO_750: (&str, &str) = ("Qualcomm", "Adreno (TM) 750");
const ADRENO_740: (&str, &str) = ("Qualcomm", "Adreno (TM) 740");

const DEVICES: &[Device] = &[
    Device {
        name: "Pixel 7",
        os: "android",
        system: "14.0.0",
        viewport: (412, 839),
        screen: (412, 915),
        dpr: 2.625,
        tablet: false,
        cores: 8,
        memory: Some(8.0),
        gpu: MALI_G710,
    },
    Device {
        name: "Pixel 8",
        os: "android",
        system: "14.0.0",
        viewport: (412, 839),
        screen: (412, 915),
        dpr: 2.625,
        tablet: false,
        cores: 8,
        memory: Some(8.0),
        gpu: MALI_G715,
    },
    Device {
        name: "Pixel 8 Pro",
        os: "android",
        system: "14.0.0",
        viewport: (448, 921),
        screen: (448, 997),
        dpr: 3.0,
        tablet: false,
        cores: 8,
        memory: Some(8.0),
        gpu: MALI_G715,
    },
    Device {
        name: "Pixel 9",
        os: "android",
        system: "14.0.0",
        viewport: (360, 732),
        screen: (360, 808),
        dpr: 3.0,
        tablet: false,
        cores: 8,
        memory: Some(8.0),
        gpu: MALI_G715,
    },
    Device {
        name: "Galaxy S24",
        os: "android",
        system: "14.0.0",
        viewport: (360, 780),
        screen: (360, 780),
        dpr: 3.0,
        tablet: false,
        cores: 8,
        memory: Some(8.0),
        gpu: ADRENO_750,
    },
    Device {
        name: "Galaxy Tab S9",
        os: "android",
        system: "14.0.0",
        viewport: (640, 1024),
        screen: (640, 1024),
        dpr: 2.5,
        tablet: true,
        cores: 8,
        memory: Some(8.0),
        gpu: ADRENO_740,
    },
    Device {
        name: "iPhone 15",
        os: "ios",
        system: IPHONE_17_5,
        viewport: (393, 659),
        screen: (393, 852),
        dpr: 3.0,
        tablet: false,
        cores: 4,
        memory: None,
        gpu: APPLE_GPU,
    },
    Device {
        name: "iPhone 15 Plus",
        os: "ios",
        system: IPHONE_17_5,
        viewport: (430, 739),
        screen: (430, 932),
        dpr: 3.0,
        tablet: false,
        cores: 4,
        memory: None,
        gpu: APPLE_GPU,
    },
    Device {
        name: "iPhone 15 Pro",
        os: "ios",
        system: IPHONE_17_5,
        viewport: (393, 659),
        screen: (393, 852),
        dpr: 3.0,
        tablet: false,
        cores: 4,
        memory: None,
        gpu: APPLE_GPU,
    },
    Device {
        name: "iPhone 15 Pro Max",
        os: "ios",
        system: IPHONE_17_5,
        viewport: (430, 739),
        screen: (430, 932),
        dpr: 3.0,
        tablet: false,
        cores: 4,
        memory: None,
        gpu: APPLE_GPU,
    },
    Device {
        name: "iPad",
        os: "ios",
        system: IPAD_12_2,
        viewport: (810, 1080),
        screen: (810, 1080),
        dpr: 2.0,
        tablet: true,
        cores: 4,
        memory: None,
        gpu: APPLE_GPU,
    },
    Device {
        name: "iPad Pro 11",
        os: "ios",
        system: IPAD_12_2,
        viewport: (834, 1194),
        screen: (834, 1194),
        dpr: 2.0,
        tablet: true,
        cores: 4,
        memory: None,
        gpu: APPLE_GPU,
    },
];

/// Every device's name, for error messages.
pub(crate) fn names() -> Vec<&'static str> {
    DEVICES.iter().map(|d| d.name).collect()
}

/// Whether `name` is a device here.
pub(crate) fn known(name: &str) -> bool {
    DEVICES.iter().any(|d| d.name == name)
}

/// The table as `GET /public/devices` shows it.
pub(crate) fn list() -> Value {
    let devices: Vec<Value> = DEVICES
        .iter()
        .map(|d| {
            json!({
                "name": d.name,
                "os": d.os,
                "type": if d.tablet { "tablet" } else { "phone" },
                "viewport": { "width": d.viewport.0, "height": d.viewport.1 },
                "screen": { "width": d.screen.0, "height": d.screen.1 },
                "device_pixel_ratio": d.dpr,
                "touch": true,
                "orientation": "portrait",
            })
        })
        .collect();
    json!({ "devices": devices })
}

/// The fingerprint of device `name` on a browser of version `own`, or None for a name
/// not in the table.
pub(crate) fn pick(name: &str, own: &OwnVersion, seed: u64) -> Option<Fingerprint> {
    let d = DEVICES.iter().find(|d| d.name == name)?;
    let major = own.major;
    let (user_agent, platform, vendor, client_hints) = if d.os == "ios" {
        let platform = if d.tablet { "iPad" } else { "iPhone" };
        (
            d.system.to_owned(),
            platform,
            Some("Apple Computer, Inc.".to_owned()),
            None,
        )
    } else {
        let mobile = if d.tablet { "" } else { "Mobile " };
        let ua = format!(
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.0.0 {mobile}Safari/537.36"
        );
        let (brands, full_list) = chrome_brands(major, own.full);
        let hints = json!({
            "brands": brands,
            "fullVersionList": full_list,
            "fullVersion": own.full,
            "platform": "Android",
            "platformVersion": d.system,
            "architecture": "",
            "bitness": "",
            "model": if d.name.starts_with("Galaxy S24") { "SM-S921U" } else if d.name.starts_with("Galaxy Tab S9") { "SM-X710" } else { d.name },
            "mobile": !d.tablet,
            "wow64": false,
        });
        (ua, "Linux armv8l", None, Some(hints))
    };
    Some(Fingerprint {
        os: d.os.to_owned(),
        device: Some(d.name.to_owned()),
        seed,
        browser_version: major,
        user_agent,
        platform: platform.to_owned(),
        vendor,
        client_hints,
        hardware_concurrency: d.cores,
        device_memory: d.memory,
        screen: Screen {
            width: d.screen.0,
            height: d.screen.1,
        },
        viewport: Some(Screen {
            width: d.viewport.0,
            height: d.viewport.1,
        }),
        device_pixel_ratio: d.dpr,
        mobile: true,
        max_touch_points: 5,
        webgl_vendor: d.gpu.0.to_owned(),
        webgl_renderer: d.gpu.1.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dozen_devices_each_coherent() {
        let own = OwnVersion::of("156.0.8078.114").unwrap();
        assert_eq!(DEVICES.len(), 12);
        for name in names() {
            let fp = pick(name, &own, 1).unwrap();
            let view = fp.viewport.unwrap();
            assert!(
                view.width <= fp.screen.width && view.height <= fp.screen.height,
                "{name}"
            );
            match fp.os.as_str() {
                "android" => {
                    let hints = fp.client_hints.as_ref().unwrap();
                    assert_eq!(hints["platform"], "Android");
                    assert_eq!(hints["mobile"], json!(fp.user_agent.contains("Mobile")), "{name}");
                    assert!(fp.user_agent.contains("Chrome/156.0.0.0"));
                }
                _ => {
                    assert!(fp.client_hints.is_none() && fp.user_agent.contains("like Mac OS X"));
                    assert!(fp.device_memory.is_none());
                }
            }
        }
        assert!(pick("Nokia 3310", &own, 1).is_none());
        assert_eq!(list()["devices"].as_array().unwrap().len(), 12);
    }
}
