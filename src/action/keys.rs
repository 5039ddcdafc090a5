//! Key names as people write them ("Enter", "ctrl+a", "the down arrow") and what CDP's
//! `Input.dispatchKeyEvent` needs to press them.

/// One key of a combination, as DOM and Windows name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    /// DOM `key` ("Enter", "a", "ArrowDown").
    pub key: String,
    /// DOM `code` ("Enter", "KeyA", "ArrowDown").
    pub code: String,
    pub key_code: u32,
    /// What the key types, if anything ("\r" for Enter).
    pub text: Option<String>,
}

/// A key pressed with modifiers held (`modifiers` is CDP's bit mask).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chord {
    pub modifiers: Vec<Key>,
    pub mask: u8,
    pub key: Key,
}

impl Chord {
    /// The chord in its canonical spelling ("Control+A").
    pub(crate) fn name(&self) -> String {
        let mut parts: Vec<&str> = self.modifiers.iter().map(|m| m.key.as_str()).collect();
        let main = if self.key.key.len() == 1 {
            self.key.key.to_uppercase()
        } else {
            self.key.key.clone()
        };
        parts.push(&main);
        parts.join("+")
    }
}

const NAMED: &[(&[&str], &str, u32, Option<&str>)] = &[
    (&["enter", "return"], "Enter", 13, Some("\r")),
    (&["tab"], "Tab", 9, None),
    (&["escape", "esc"], "Escape", 27, None),
    (&["backspace"], "Backspace", 8, None),
    (&["delete", "del"], "Delete", 46, None),
    (&["space", "spacebar", "space bar"], " ", 32, Some(" ")),
    (
        &["arrowleft", "left", "left arrow", "arrow left"],
        "ArrowLeft",
        37,
        None,
    ),
    (&["arrowup", "up", "up arrow", "arrow up"], "ArrowUp", 38, None),
    (
        &["arrowright", "right", "right arrow", "arrow right"],
        "ArrowRight",
        39,
        None,
    ),
    (
        &["arrowdown", "down", "down arrow", "arrow down"],
        "ArrowDown",
        40,
        None,
    ),
    (&["home"], "Home", 36, None),
    (&["end"], "End", 35, None),
    (&["pageup", "page up"], "PageUp", 33, None),
    (&["pagedown", "page down"], "PageDown", 34, None),
    (&["insert"], "Insert", 45, None),
];

const MODIFIERS: &[(&[&str], &str, u32, u8)] = &[
    (&["alt", "option"], "Alt", 18, 1),
    (&["control", "ctrl"], "Control", 17, 2),
    (&["meta", "cmd", "command", "super", "win"], "Meta", 91, 4),
    (&["shift"], "Shift", 16, 8),
];

/// Parses "Enter", "Ctrl+Shift+K", "control + a", "F5", "the down arrow key".
pub(crate) fn parse(spec: &str) -> Option<Chord> {
    let spec = spec.trim().to_ascii_lowercase();
    let spec = spec.strip_prefix("the ").unwrap_or(&spec);
    let spec = spec.strip_suffix(" key").unwrap_or(spec).trim();
    if spec.is_empty() {
        return None;
    }
    let parts: Vec<&str> = spec.split('+').map(str::trim).collect();
    let (last, held) = parts.split_last()?;
    let mut modifiers = Vec::new();
    let mut mask = 0;
    for word in held {
        let (_, key, key_code, bit) = MODIFIERS.iter().find(|(names, ..)| names.contains(word))?;
        modifiers.push(Key {
            key: (*key).into(),
            code: format!("{key}Left"),
            key_code: *key_code,
            text: None,
        });
        mask |= bit;
    }
    let key = single(last)?;
    Some(Chord { modifiers, mask, key })
}

fn single(word: &str) -> Option<Key> {
    if let Some((_, key, key_code, text)) = NAMED.iter().find(|(names, ..)| names.contains(&word)) {
        let code = if *key == " " { "Space" } else { key };
        return Some(Key {
            key: (*key).into(),
            code: code.into(),
            key_code: *key_code,
            text: text.map(str::to_owned),
        });
    }
    if let Some(n) = word.strip_prefix('f').and_then(|n| n.parse::<u32>().ok())
        && (1..=12).contains(&n)
    {
        return Some(Key {
            key: format!("F{n}"),
            code: format!("F{n}"),
            key_code: 111 + n,
            text: None,
        });
    }
    let mut chars = word.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return None;
    };
    match c {
        'a'..='z' => Some(Key {
            key: c.to_string(),
            code: format!("Key{}", c.to_ascii_uppercase()),
            key_code: c.to_ascii_uppercase() as u32,
            text: Some(c.to_string()),
        }),
        '0'..='9' => Some(Key {
            key: c.to_string(),
            code: format!("Digit{c}"),
            key_code: c as u32,
            text: Some(c.to_string()),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_as_people_write_them() {
        let enter = parse("Enter").unwrap();
        assert_eq!(
            (enter.key.key.as_str(), enter.key.key_code, enter.mask),
            ("Enter", 13, 0)
        );
        assert_eq!(enter.key.text.as_deref(), Some("\r"));
        assert_eq!(parse("the Return key").unwrap().name(), "Enter");
        let chord = parse("ctrl + shift + k").unwrap();
        assert_eq!(chord.name(), "Control+Shift+K");
        assert_eq!(chord.mask, 2 | 8);
        assert_eq!(parse("down arrow").unwrap().key.key, "ArrowDown");
        assert_eq!(parse("F5").unwrap().key.key_code, 116);
        assert_eq!(parse("7").unwrap().key.code, "Digit7");
        for bad in ["", "the Sign in button", "ctrl+", "hyper+a", "f13", "ab"] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
