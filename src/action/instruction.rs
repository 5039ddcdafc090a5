//! The instructions the built-in interpreter understands, read from plain words into
//! [`Step`]s. Parsing works on the action as written, with `{{name}}` placeholders still in
//! it: values are filled in only when a step runs, so neither a cached step nor a log line
//! ever holds a password.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::keys;

/// An element as the user named it, or (once resolved) the CSS path it was found at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The words the user used ("the Sign in button"), for messages.
    pub described: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub css: Option<String>,
    /// Set on resolved targets: what the element was (tag, role, name), so that a cached
    /// step refuses a different element at the same path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl Target {
    pub fn css(described: impl Into<String>, css: impl Into<String>) -> Target {
        Target {
            described: described.into(),
            role: None,
            name: None,
            css: Some(css.into()),
            fingerprint: None,
        }
    }

    /// Whether it is named through a variable (`{{name}}`).
    pub fn has_placeholder(&self) -> bool {
        [Some(&self.described), self.name.as_ref(), self.css.as_ref()]
            .into_iter()
            .flatten()
            .any(|s| s.contains("{{"))
    }

    /// What `page.js`'s `locate` takes, with placeholders filled.
    pub fn spec(&self, fill: &impl Fn(&str) -> String) -> Value {
        json!({
            "role": self.role,
            "name": self.name.as_deref().map(fill),
            "css": self.css.as_deref().map(fill),
            "fingerprint": self.fingerprint,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrollTo {
    /// Pixels, down when positive.
    By(i64),
    Top,
    Bottom,
    Element(Target),
}

/// One primitive with what it acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    Goto {
        url: String,
    },
    Back,
    Forward,
    Reload,
    Click {
        target: Target,
        count: u8,
    },
    /// Types into `target` (replacing what it holds), or where the caret is.
    Type {
        target: Option<Target>,
        text: String,
    },
    Press {
        key: String,
        target: Option<Target>,
    },
    Select {
        target: Target,
        option: String,
    },
    Check {
        target: Target,
        on: bool,
    },
    Hover {
        target: Target,
    },
    /// Puts a file of the session's files (by name) on a file input.
    Upload {
        target: Target,
        file: String,
    },
    Scroll {
        to: ScrollTo,
    },
    WaitText {
        text: String,
    },
    WaitFor {
        target: Target,
    },
    WaitLoad,
    Sleep {
        ms: u64,
    },
    ReadText {
        target: Option<Target>,
    },
    ReadTitle,
    ReadUrl,
    Screenshot {
        full_page: bool,
    },
}

impl Step {
    /// The element the step acts on, if any.
    pub fn target_mut(&mut self) -> Option<&mut Target> {
        match self {
            Step::Click { target, .. }
            | Step::Select { target, .. }
            | Step::Check { target, .. }
            | Step::Hover { target }
            | Step::Upload { target, .. }
            | Step::WaitFor { target }
            | Step::Scroll {
                to: ScrollTo::Element(target),
            } => Some(target),
            Step::Type { target, .. } | Step::Press { target, .. } | Step::ReadText { target } => target.as_mut(),
            _ => None,
        }
    }
}

/// Longest sleep an instruction may ask for.
pub(crate) const MAX_SLEEP_MS: u64 = 60_000;

/// What the interpreter understands, for the error that says it did not.
pub(crate) const UNDERSTOOD: &str = "go to <url>; go back / reload; click <element>; double-click <element>; \
type <text> into <element>; fill <element> with <text>; clear <element>; press <key> (Enter, Tab, Ctrl+A…); \
select <option> from <element>; check / uncheck <element>; hover over <element>; \
upload <file> to <element> (a file uploaded to the session's files); \
scroll down|up [<n> pixels]; scroll to the top|bottom; scroll to <element>; wait for <element>; \
wait for the text \"…\"; wait <n> seconds; get the text of <element>; get the page text; \
get the title; get the URL; take a screenshot; take a full-page screenshot. \
Steps may be joined with \"then\", \";\" or \", and\". Elements are named by their visible text, \
label, placeholder or aria-label, optionally with a kind (\"the Sign in button\", \"the Email field\"), \
or by CSS (css:#login).";

/// Reads `action` into steps; `Err` names the part that is not understood.
pub(crate) fn parse(action: &str) -> Result<Vec<Step>, String> {
    let clauses = split_clauses(action);
    if clauses.is_empty() {
        return Err(action.trim().to_owned());
    }
    let mut steps = Vec::new();
    for clause in clauses {
        steps.push(parse_clause(&clause).ok_or(clause)?);
    }
    Ok(steps)
}

/// Verbs that may begin a step after "and" or a comma.
const VERBS: &[&str] = &[
    "click",
    "double-click",
    "double",
    "tap",
    "press",
    "hit",
    "type",
    "enter",
    "fill",
    "input",
    "write",
    "clear",
    "select",
    "choose",
    "check",
    "uncheck",
    "tick",
    "untick",
    "hover",
    "upload",
    "attach",
    "scroll",
    "wait",
    "go",
    "navigate",
    "open",
    "visit",
    "read",
    "get",
    "extract",
    "return",
    "take",
    "capture",
    "submit",
    "reload",
    "refresh",
    "then",
];

/// Splits at `;`, new lines, sentence ends, "then", and at "and"/"," before a verb; never
/// inside quotes or placeholders.
fn split_clauses(action: &str) -> Vec<String> {
    let mut clauses = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let chars: Vec<char> = action.chars().collect();
    let mut i = 0;
    let push = |current: &mut String, clauses: &mut Vec<String>| {
        let c = clean(current);
        if !c.is_empty() {
            clauses.push(c);
        }
        current.clear();
    };
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            current.push(c);
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '"' | '`' => quote = Some(c),
            '“' => quote = Some('”'),
            '{' if chars.get(i + 1) == Some(&'{') => quote = Some('}'),
            _ => {}
        }
        let rest: String = chars[i..].iter().take(16).collect::<String>().to_ascii_lowercase();
        let next_word_is_verb = |from: usize| {
            let tail: String = chars[from..]
                .iter()
                .collect::<String>()
                .trim_start()
                .to_ascii_lowercase();
            let word: String = tail.chars().take_while(|c| c.is_alphanumeric() || *c == '-').collect();
            VERBS.contains(&word.as_str())
        };
        let sentence_end = matches!(c, '.' | '!' | '?') && chars.get(i + 1).is_none_or(|n| n.is_whitespace());
        if c == ';' || c == '\n' || sentence_end || (c == ',' && next_word_is_verb(i + 1)) {
            push(&mut current, &mut clauses);
        } else if c == ' ' && (rest.starts_with(" and ") || rest.starts_with(" then ")) {
            let skip = if rest.starts_with(" and ") { 5 } else { 6 };
            if rest.starts_with(" then ") || next_word_is_verb(i + skip) {
                push(&mut current, &mut clauses);
                i += skip - 1;
            } else {
                current.push(c);
            }
        } else {
            current.push(c);
        }
        i += 1;
    }
    push(&mut current, &mut clauses);
    clauses
}

/// Drops leading "then"/"and"/"please", trailing punctuation and spaces.
fn clean(s: &str) -> String {
    let mut s = s.trim().trim_end_matches(['.', '!', '?', ',']).trim();
    loop {
        let lower = s.to_ascii_lowercase();
        let Some(word) = [
            "then ", "and ", "please ", "now ", "also ", "finally ", "first ", "next ",
        ]
        .iter()
        .find(|w| lower.starts_with(*w)) else {
            break;
        };
        s = s[word.len()..].trim_start();
    }
    s.trim_start_matches(',').trim().to_owned()
}

/// `s` without the first of `prefixes` it starts with (ignoring ASCII case).
fn after<'a>(s: &'a str, prefixes: &[&str]) -> Option<&'a str> {
    let lower = s.to_ascii_lowercase();
    prefixes
        .iter()
        .find(|p| lower.starts_with(*p))
        .map(|p| s[p.len()..].trim())
}

/// Splits at the first ` <word> ` outside quotes and placeholders.
fn split_at_word<'a>(s: &'a str, words: &[&str]) -> Option<(&'a str, &'a str)> {
    let lower = s.to_ascii_lowercase();
    let mut quote: Option<u8> = None;
    let bytes = lower.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'`' => quote = Some(b),
            None if b == b'{' && bytes.get(i + 1) == Some(&b'{') => quote = Some(b'}'),
            None => {
                for w in words {
                    let pattern = format!(" {w} ");
                    // Byte-wise: `i` may fall inside a multi-byte character; a match
                    // starts with a space, so it never does.
                    if bytes[i..].starts_with(pattern.as_bytes()) {
                        return Some((s[..i].trim(), s[i + pattern.len()..].trim()));
                    }
                }
            }
        }
        i += 1;
    }
    None
}

/// The text inside matching quotes, or the text as it is.
pub(crate) fn unquote(s: &str) -> String {
    let s = s.trim();
    for (open, close) in [('"', '"'), ('\'', '\''), ('“', '”'), ('‘', '’'), ('`', '`')] {
        if s.len() >= 2 && s.starts_with(open) && s.ends_with(close) {
            return s[open.len_utf8()..s.len() - close.len_utf8()].to_owned();
        }
    }
    s.to_owned()
}

fn parse_clause(clause: &str) -> Option<Step> {
    let lower = clause.to_ascii_lowercase();
    if let Some(step) = parse_fixed(&lower) {
        return Some(step);
    }
    // The first verb that opens the clause decides what it is; its rest may still fail.
    let verb = |verbs: &[Verb]| {
        verbs
            .iter()
            .find_map(|(prefixes, parse)| after(clause, prefixes).map(parse))
    };
    if let Some(step) = verb(CLAUSE_VERBS) {
        return step;
    }
    if let Some(step) = parse_read(clause) {
        return Some(step);
    }
    verb(CLICKS).flatten()
}

/// Words that open a clause, and how the rest after them is read.
type Verb = (&'static [&'static str], fn(&str) -> Option<Step>);

const CLAUSE_VERBS: &[Verb] = &[
    (&["wait for ", "wait until ", "wait till ", "wait while "], |rest| {
        Some(parse_wait(rest))
    }),
    (
        &["go to ", "navigate to ", "browse to ", "open ", "visit ", "load "],
        parse_goto,
    ),
    (&["press ", "hit ", "push "], parse_press),
    (&["clear "], |rest| {
        Some(Step::Type {
            target: Some(target(rest)?),
            text: String::new(),
        })
    }),
    (&["fill in ", "fill out ", "fill ", "set "], |rest| {
        let (field, text) = split_at_word(rest, &["with", "to"])?;
        Some(Step::Type {
            target: Some(target(field)?),
            text: unquote(text),
        })
    }),
    (&["type ", "enter ", "input ", "write ", "put ", "insert "], parse_type),
    (&["select ", "choose ", "pick "], parse_select),
    (&["upload ", "attach "], parse_upload),
    (&["uncheck ", "untick ", "unmark ", "deselect "], |rest| {
        Some(Step::Check {
            target: checkable(rest)?,
            on: false,
        })
    }),
    (&["check ", "tick ", "mark "], |rest| {
        if after(rest, &["that ", "if ", "whether "]).is_some() {
            return None;
        }
        Some(Step::Check {
            target: checkable(rest)?,
            on: true,
        })
    }),
    (
        &[
            "hover over ",
            "hover on ",
            "hover ",
            "mouse over ",
            "move the mouse over ",
            "move the mouse to ",
        ],
        |rest| Some(Step::Hover { target: target(rest)? }),
    ),
    (&["scroll "], parse_scroll),
];

/// Clicks come last: "click" appears inside other instructions' wording.
const CLICKS: &[Verb] = &[
    (
        &["double-click on ", "double-click ", "double click on ", "double click "],
        |rest| click(rest, 2),
    ),
    (
        &["click on ", "click ", "tap on ", "tap ", "follow ", "activate "],
        |rest| click(rest, 1),
    ),
];

/// Whole instructions of a few fixed words, screenshots and pauses.
fn parse_fixed(l: &str) -> Option<Step> {
    if l.contains("screenshot") || l.contains("screen shot") {
        let full_page = ["full page", "full-page", "entire page", "whole page", "fullpage"]
            .iter()
            .any(|w| l.contains(w));
        return Some(Step::Screenshot { full_page });
    }
    if let Some(ms) = parse_sleep(l) {
        return Some(Step::Sleep { ms });
    }
    match l {
        "go back" | "navigate back" | "back" | "go to the previous page" => Some(Step::Back),
        "go forward" | "navigate forward" | "forward" => Some(Step::Forward),
        "reload" | "refresh" | "reload the page" | "refresh the page" => Some(Step::Reload),
        "submit" | "submit the form" => Some(Step::Click {
            target: Target::css(
                "the form's submit button",
                "form [type=submit], form button:not([type])",
            ),
            count: 1,
        }),
        _ => None,
    }
}

fn click(rest: &str, count: u8) -> Option<Step> {
    Some(Step::Click {
        target: target(rest)?,
        count,
    })
}

/// "go to example.com"; "open the Settings tab" is a click.
fn parse_goto(rest: &str) -> Option<Step> {
    let rest = after(rest, &["the url ", "url ", "the page at ", "the website "]).unwrap_or(rest);
    if looks_like_url(rest) {
        return Some(Step::Goto { url: unquote(rest) });
    }
    click(rest, 1)
}

/// "press Enter", "press Control+A in the editor"; "press the Save button" is a click.
fn parse_press(rest: &str) -> Option<Step> {
    let (key, on) = match split_at_word(rest, &["in", "on", "into"]) {
        Some((key, on)) if keys::parse(&unquote(key)).is_some() => (unquote(key), Some(target(on)?)),
        _ => (unquote(rest), None),
    };
    if let Some(chord) = keys::parse(&key) {
        return Some(Step::Press {
            key: chord.name(),
            target: on,
        });
    }
    click(rest, 1)
}

/// "type hello into the Search field", or "type hello" where the focus is.
fn parse_type(rest: &str) -> Option<Step> {
    Some(match split_at_word(rest, &["into", "in", "on"]) {
        Some((text, field)) => Step::Type {
            target: Some(target(field)?),
            text: unquote(text),
        },
        None => Step::Type {
            target: None,
            text: unquote(rest),
        },
    })
}

/// "select Blue from the Colour list"; "select the second result" is a click.
fn parse_select(rest: &str) -> Option<Step> {
    if let Some((option, list)) = split_at_word(rest, &["from", "in"]) {
        return Some(Step::Select {
            target: target(list)?,
            option: unquote(option),
        });
    }
    click(rest, 1)
}

/// "upload resume.pdf to the Resume field": the element is a file input (named by its
/// label, name or aria-label), whatever kind of element the words say.
fn parse_upload(rest: &str) -> Option<Step> {
    let (file, input) = split_at_word(rest, &["to", "into", "in", "on", "for"])?;
    let mut target = target(input)?;
    if target.css.is_none() {
        target.role = Some("file".into());
    }
    Some(Step::Upload {
        target,
        file: unquote(file),
    })
}

/// "wait 2 seconds", "wait for 500 ms".
fn parse_sleep(l: &str) -> Option<u64> {
    let rest = l.strip_prefix("wait ")?;
    let rest = rest.strip_prefix("for ").unwrap_or(rest);
    let rest = rest.strip_prefix("about ").unwrap_or(rest);
    let (number, unit) = rest.split_once(' ').unwrap_or((rest, ""));
    let (number, unit) = match number.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) if unit.is_empty() => (&number[..at], &number[at..]),
        _ => (number, unit),
    };
    let n: f64 = match number {
        "a" | "one" => 1.0,
        "two" => 2.0,
        "three" => 3.0,
        "five" => 5.0,
        n => n.parse().ok()?,
    };
    let factor = match unit.trim() {
        "ms" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1000.0,
        "min" | "minute" | "minutes" => 60_000.0,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then(|| ((n * factor) as u64).min(MAX_SLEEP_MS))
}

fn parse_wait(rest: &str) -> Step {
    let mut rest = rest.trim();
    for suffix in [
        " to appear",
        " to be visible",
        " to show up",
        " to be shown",
        " appears",
        " is visible",
        " is shown",
        " shows up",
        " to load",
        " loads",
        " has loaded",
        " to finish loading",
        " is loaded",
    ] {
        if rest.len() > suffix.len() && rest.to_ascii_lowercase().ends_with(suffix) {
            rest = rest[..rest.len() - suffix.len()].trim();
            break;
        }
    }
    let lower = rest.to_ascii_lowercase();
    if [
        "the page",
        "page",
        "the page load",
        "page load",
        "navigation",
        "the navigation",
    ]
    .contains(&lower.as_str())
    {
        return Step::WaitLoad;
    }
    if let Some(text) = after(
        rest,
        &[
            "the text ",
            "text ",
            "the page to show ",
            "the page to contain ",
            "the page to say ",
            "the page to display ",
            "the page shows ",
            "the page contains ",
            "the page says ",
            "the page displays ",
            "page shows ",
            "page contains ",
        ],
    ) {
        return Step::WaitText { text: unquote(text) };
    }
    if is_quoted(rest) {
        return Step::WaitText { text: unquote(rest) };
    }
    match target(rest) {
        Some(target) => Step::WaitFor { target },
        None => Step::WaitText { text: unquote(rest) },
    }
}

fn parse_scroll(rest: &str) -> Option<Step> {
    let lower = rest.to_ascii_lowercase();
    let l = lower
        .trim_start_matches("the page ")
        .trim_start_matches("page ")
        .trim_end_matches(" of the page")
        .trim();
    let to = match l {
        "to the bottom" | "to bottom" | "to the end" | "down to the bottom" | "all the way down" => ScrollTo::Bottom,
        "to the top" | "to top" | "to the start" | "up to the top" | "all the way up" => ScrollTo::Top,
        _ => {
            if let Some(direction) = ["down", "up"].iter().find(|d| l.starts_with(*d)) {
                let amount = l[direction.len()..]
                    .trim()
                    .trim_start_matches("by ")
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.trim_end_matches("px").parse::<i64>().ok())
                    .unwrap_or(600)
                    .clamp(1, 100_000);
                ScrollTo::By(if *direction == "down" { amount } else { -amount })
            } else {
                let element = after(rest, &["to ", "until "]).unwrap_or(rest);
                let element = [" is visible", " into view", " is in view", " appears"]
                    .iter()
                    .find_map(|s| {
                        element
                            .to_ascii_lowercase()
                            .ends_with(s)
                            .then(|| &element[..element.len() - s.len()])
                    })
                    .unwrap_or(element);
                ScrollTo::Element(target(element)?)
            }
        }
    };
    Some(Step::Scroll { to })
}

fn parse_read(clause: &str) -> Option<Step> {
    let rest = after(
        clause,
        &[
            "what is ",
            "what's ",
            "tell me ",
            "get ",
            "read ",
            "extract ",
            "return ",
            "copy ",
            "give me ",
            "show me ",
            "find out ",
            "grab ",
        ],
    )?;
    let rest = after(rest, &["the ", "me the "]).unwrap_or(rest);
    let l = rest.to_ascii_lowercase();
    let l = l.trim_end_matches(" of the page").trim_end_matches(" of this page");
    if ["title", "page title", "page's title", "title of the page", "tab title"].contains(&l) {
        return Some(Step::ReadTitle);
    }
    if [
        "url",
        "current url",
        "page url",
        "page's url",
        "address",
        "current address",
        "location",
        "current page url",
    ]
    .contains(&l)
    {
        return Some(Step::ReadUrl);
    }
    if [
        "text",
        "page text",
        "text of the page",
        "page content",
        "content",
        "contents",
        "page contents",
        "visible text",
        "whole page",
        "page",
        "entire page",
    ]
    .contains(&l)
    {
        return Some(Step::ReadText { target: None });
    }
    let element = after(
        rest,
        &[
            "text of ",
            "text from ",
            "text in ",
            "text inside ",
            "value of ",
            "content of ",
            "contents of ",
        ],
    )
    .unwrap_or(rest);
    Some(Step::ReadText {
        target: Some(target(element)?),
    })
}

fn is_quoted(s: &str) -> bool {
    unquote(s) != s.trim()
}

fn looks_like_url(s: &str) -> bool {
    let s = unquote(s);
    let lower = s.to_ascii_lowercase();
    if s.contains(' ') {
        return false;
    }
    let scheme = lower.split_once(':').map(|(s, _)| s).unwrap_or("");
    lower.contains("://")
        || ["about", "file", "data", "javascript", "chrome", "blob", "view-source"].contains(&scheme)
        || lower.starts_with("{{")
        || lower.starts_with("localhost")
        || (lower.contains('.') && !lower.starts_with('.') && !lower.starts_with('#') && !lower.ends_with('.'))
}

/// Role words, longest first so that "radio button" beats "button".
const ROLE_WORDS: &[(&str, &str)] = &[
    ("radio button", "radio"),
    ("text field", "textbox"),
    ("input field", "textbox"),
    ("text input", "textbox"),
    ("text box", "textbox"),
    ("text area", "textbox"),
    ("check box", "checkbox"),
    ("drop-down list", "combobox"),
    ("dropdown list", "combobox"),
    ("drop-down menu", "combobox"),
    ("dropdown menu", "combobox"),
    ("drop-down", "combobox"),
    ("dropdown", "combobox"),
    ("drop down", "combobox"),
    ("select box", "combobox"),
    ("combo box", "combobox"),
    ("menu item", "menuitem"),
    ("button", "button"),
    ("link", "link"),
    ("field", "textbox"),
    ("input", "textbox"),
    ("textbox", "textbox"),
    ("textarea", "textbox"),
    ("box", "textbox"),
    ("checkbox", "checkbox"),
    ("radio", "radio"),
    ("combobox", "combobox"),
    ("heading", "heading"),
    ("header", "heading"),
    ("headline", "heading"),
    ("image", "img"),
    ("picture", "img"),
    ("icon", "img"),
    ("tab", "tab"),
    ("option", "option"),
    ("switch", "switch"),
    ("toggle", "switch"),
];

/// Tag names that name an element by themselves ("the h1", "the table").
const TAGS: &[&str] = &[
    "h1", "h2", "h3", "h4", "h5", "h6", "main", "nav", "header", "footer", "table", "form", "textarea", "select",
    "article", "aside", "body", "p", "ul", "ol",
];

/// An element phrase: "the Sign in button", "\"Sign in\"", "the field labeled Email",
/// "css:#login", "#login", "the h1".
pub(crate) fn target(phrase: &str) -> Option<Target> {
    let described = phrase.trim().trim_end_matches(['.', ',']).trim().to_owned();
    if described.is_empty() {
        return None;
    }
    let rest = after(&described, &["on the ", "the ", "a ", "an "]).unwrap_or(&described);
    if let Some(css) = after(rest, &["css:", "css=", "selector ", "element matching ", "element "]) {
        let css = unquote(css);
        return (!css.is_empty()).then(|| Target::css(described.clone(), css));
    }
    if rest.starts_with(['#', '.', '[']) && !rest.contains(' ') || rest.starts_with('`') {
        return Some(Target::css(described.clone(), unquote(rest)));
    }
    if TAGS.contains(&rest.to_ascii_lowercase().as_str()) {
        return Some(Target::css(described.clone(), rest.to_ascii_lowercase()));
    }
    let mut role = None;
    // "the button labeled Save", "the field with placeholder Email".
    if let Some((left, name)) = split_at_word(
        rest,
        &[
            "labeled",
            "labelled",
            "named",
            "called",
            "titled",
            "that says",
            "saying",
            "reading",
            "with text",
            "with the text",
            "with label",
            "with the label",
            "with placeholder",
            "with the placeholder",
            "with aria-label",
            "containing",
        ],
    ) {
        role = role_of(left);
        if role.is_none() && !["element", "thing", "item", "control"].contains(&left.to_ascii_lowercase().as_str()) {
            return None;
        }
        let name = unquote(name);
        return Some(Target {
            described: described.clone(),
            role,
            name: Some(name),
            css: None,
            fingerprint: None,
        });
    }
    let lower = rest.to_ascii_lowercase();
    let mut name = rest.to_owned();
    // "the search box": a field named Search.
    if ["search box", "search field", "search bar", "search input"].contains(&lower.as_str()) {
        return Some(Target {
            described: described.clone(),
            role: Some("textbox".into()),
            name: Some("search".into()),
            css: None,
            fingerprint: None,
        });
    }
    // The kind after the name ("the Save button") is the usual order; before it ("the link
    // Pricing", "the button \"Save\"") is tried second.
    let suffix = ROLE_WORDS.iter().find_map(|(word, r)| {
        if lower == *word {
            Some((*r, String::new()))
        } else {
            lower
                .ends_with(&format!(" {word}"))
                .then(|| (*r, rest[..rest.len() - word.len()].trim().to_owned()))
        }
    });
    let prefix = || {
        ROLE_WORDS.iter().find_map(|(word, r)| {
            lower
                .starts_with(&format!("{word} "))
                .then(|| (*r, rest[word.len()..].trim().to_owned()))
        })
    };
    if let Some((r, n)) = suffix.or_else(prefix) {
        role = Some(r.to_owned());
        name = n;
    }
    let name = unquote(&name);
    Some(Target {
        described: described.clone(),
        role,
        name: (!name.is_empty()).then_some(name),
        css: None,
        fingerprint: None,
    })
}

fn role_of(words: &str) -> Option<String> {
    let lower = words.to_ascii_lowercase();
    ROLE_WORDS
        .iter()
        .find(|(w, _)| lower == *w || lower.ends_with(&format!(" {w}")))
        .map(|(_, r)| (*r).to_owned())
}

/// A target for check/uncheck: a checkbox unless the words say otherwise.
fn checkable(phrase: &str) -> Option<Target> {
    let mut t = target(phrase)?;
    if t.role.is_none() && t.css.is_none() {
        t.role = Some("checkbox".into());
    }
    Some(t)
}

/// `{{name}}` placeholders in `text`, in order, each once.
pub(crate) fn placeholders(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else { break };
        let name = rest[start + 2..start + 2 + len].trim().to_owned();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
        rest = &rest[start + 2 + len + 2..];
    }
    names
}

/// `text` with every `{{name}}` replaced by `lookup(name)` (left as it is when `None`).
pub(crate) fn fill(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else { break };
        out.push_str(&rest[..start]);
        let name = rest[start + 2..start + 2 + len].trim();
        match lookup(name) {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[start..start + 2 + len + 2]),
        }
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(action: &str) -> Step {
        let steps = parse(action).unwrap_or_else(|e| panic!("{action}: not understood at {e:?}"));
        assert_eq!(steps.len(), 1, "{action}: {steps:?}");
        steps.into_iter().next().unwrap()
    }

    fn role_name(step: &Step) -> (Option<&str>, Option<&str>) {
        let t = match step {
            Step::Click { target, .. } | Step::WaitFor { target } | Step::Check { target, .. } => target,
            Step::Type { target: Some(t), .. } | Step::ReadText { target: Some(t) } => t,
            other => panic!("no target in {other:?}"),
        };
        (t.role.as_deref(), t.name.as_deref())
    }

    #[test]
    fn navigation() {
        assert_eq!(
            one("Go to https://example.com/login"),
            Step::Goto {
                url: "https://example.com/login".into()
            }
        );
        assert_eq!(
            one("navigate to {{base}}/login."),
            Step::Goto {
                url: "{{base}}/login".into()
            }
        );
        assert_eq!(
            one("open example.com"),
            Step::Goto {
                url: "example.com".into()
            }
        );
        assert_eq!(one("go back"), Step::Back);
        assert_eq!(one("Refresh the page"), Step::Reload);
        assert!(matches!(one("open the Settings tab"), Step::Click { .. }));
        // Other schemes are read as URLs (and refused when the step runs), never as elements.
        for url in ["file:///etc/passwd", "javascript:alert(1)", "chrome://settings"] {
            assert_eq!(one(&format!("go to {url}")), Step::Goto { url: url.into() });
        }
    }

    #[test]
    fn clicks_name_elements_like_people_do() {
        assert_eq!(
            role_name(&one("Click the Sign in button")),
            (Some("button"), Some("Sign in"))
        );
        assert_eq!(role_name(&one("click on \"Log out\"")), (None, Some("Log out")));
        assert_eq!(
            role_name(&one("tap the link labeled Pricing")),
            (Some("link"), Some("Pricing"))
        );
        assert_eq!(
            role_name(&one("press the Submit button")),
            (Some("button"), Some("Submit"))
        );
        assert_eq!(role_name(&one("click Continue")), (None, Some("Continue")));
        assert_eq!(
            role_name(&one("click the link Jump to the end")),
            (Some("link"), Some("Jump to the end"))
        );
        assert_eq!(
            role_name(&one("click the button \"Save\"")),
            (Some("button"), Some("Save"))
        );
        assert!(matches!(one("double-click the row"), Step::Click { count: 2, .. }));
        let Step::Click { target, .. } = one("click css:#login > button") else {
            panic!()
        };
        assert_eq!(target.css.as_deref(), Some("#login > button"));
        let Step::Click { target, .. } = one("click #go") else {
            panic!()
        };
        assert_eq!(target.css.as_deref(), Some("#go"));
    }

    #[test]
    fn typing_keeps_placeholders_for_later() {
        assert_eq!(
            one("Type {{password}} into the Password field"),
            Step::Type {
                target: Some(target("the Password field").unwrap()),
                text: "{{password}}".into()
            }
        );
        let Step::Type { target: t, text } = one("type \"rock and roll\" into the search box") else {
            panic!()
        };
        assert_eq!(text, "rock and roll");
        let t = t.unwrap();
        assert_eq!(
            (t.role.as_deref(), t.name.as_deref()),
            (Some("textbox"), Some("search"))
        );
        let Step::Type { target: t, text } = one("fill the Email field with {{email}}") else {
            panic!()
        };
        assert_eq!(
            (t.unwrap().name.as_deref(), text.as_str()),
            (Some("Email"), "{{email}}")
        );
        assert!(matches!(one("type hello"), Step::Type { target: None, .. }));
        assert!(matches!(one("clear the Search field"), Step::Type { text, .. } if text.is_empty()));
    }

    #[test]
    fn keys_selects_checks_hovers_scrolls() {
        assert_eq!(
            one("press Enter"),
            Step::Press {
                key: "Enter".into(),
                target: None
            }
        );
        assert_eq!(
            one("hit ctrl+a"),
            Step::Press {
                key: "Control+A".into(),
                target: None
            }
        );
        assert!(matches!(
            one("press Enter in the search field"),
            Step::Press { target: Some(_), .. }
        ));
        assert!(
            matches!(one("select \"Canada\" from the Country dropdown"), Step::Select { option, target } if option == "Canada" && target.role.as_deref() == Some("combobox"))
        );
        assert!(
            matches!(one("check Remember me"), Step::Check { on: true, target } if target.role.as_deref() == Some("checkbox"))
        );
        assert!(matches!(
            one("uncheck the newsletter checkbox"),
            Step::Check { on: false, .. }
        ));
        assert!(parse("check that the total is 5").is_err());
        assert!(matches!(one("hover over the Products menu"), Step::Hover { .. }));
        assert_eq!(one("scroll down"), Step::Scroll { to: ScrollTo::By(600) });
        assert_eq!(one("scroll up by 200 pixels"), Step::Scroll { to: ScrollTo::By(-200) });
        assert_eq!(
            one("scroll to the bottom of the page"),
            Step::Scroll { to: ScrollTo::Bottom }
        );
        assert!(matches!(
            one("scroll to the Footer heading"),
            Step::Scroll {
                to: ScrollTo::Element(_)
            }
        ));
    }

    #[test]
    fn waits_reads_screenshots() {
        assert_eq!(
            one("wait for the text \"Welcome back\""),
            Step::WaitText {
                text: "Welcome back".into()
            }
        );
        assert_eq!(
            one("Wait until \"Done\" appears"),
            Step::WaitText { text: "Done".into() }
        );
        assert_eq!(
            role_name(&one("wait for the Dashboard heading to appear")),
            (Some("heading"), Some("Dashboard"))
        );
        assert_eq!(one("wait 2 seconds"), Step::Sleep { ms: 2000 });
        assert_eq!(one("wait for 500ms"), Step::Sleep { ms: 500 });
        assert_eq!(one("wait 10 minutes"), Step::Sleep { ms: MAX_SLEEP_MS });
        assert_eq!(one("wait for the page to load"), Step::WaitLoad);
        assert_eq!(one("What is the page title?"), Step::ReadTitle);
        assert_eq!(one("get the current URL"), Step::ReadUrl);
        assert_eq!(one("read the page text"), Step::ReadText { target: None });
        assert_eq!(
            role_name(&one("get the text of the main heading")),
            (Some("heading"), Some("main"))
        );
        assert_eq!(role_name(&one("read the heading")), (Some("heading"), None));
        assert_eq!(one("take a screenshot"), Step::Screenshot { full_page: false });
        let Step::Upload { target, file } = one("upload {{file}} to the Resume field") else {
            panic!("not an upload")
        };
        assert_eq!(
            (file.as_str(), target.role.as_deref(), target.name.as_deref()),
            ("{{file}}", Some("file"), Some("Resume"))
        );
        let Step::Upload { target, file } = one("attach \"cv 2.pdf\" to css:#cv") else {
            panic!("not an upload")
        };
        assert_eq!(
            (file.as_str(), target.css.as_deref(), target.role),
            ("cv 2.pdf", Some("#cv"), None)
        );
        assert_eq!(
            one("Capture a full-page screenshot"),
            Step::Screenshot { full_page: true }
        );
    }

    #[test]
    fn sequences_split_at_then_and_verbs_but_not_inside_quotes() {
        let steps =
            parse("Type {{user}} into the Username field, type {{pw}} into the Password field and click Sign in")
                .unwrap();
        assert_eq!(steps.len(), 3, "{steps:?}");
        let steps = parse("go to example.com; then wait for \"a; b. c\" then take a screenshot").unwrap();
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert_eq!(steps[1], Step::WaitText { text: "a; b. c".into() });
        assert_eq!(parse("click Terms and Conditions").unwrap().len(), 1);
        assert_eq!(parse("Type hello. Press Enter.").unwrap().len(), 2);
    }

    #[test]
    fn what_is_not_understood_is_named() {
        assert_eq!(
            parse("book me a flight to Paris"),
            Err("book me a flight to Paris".into())
        );
        assert_eq!(
            parse("click Save then summarize the article"),
            Err("summarize the article".into())
        );
        assert!(parse("   ").is_err());
        assert!(parse("click").is_err());
        // Found by fuzzing: words split next to multi-byte characters.
        assert!(parse("type ‘x’ intö the Üser field, go to https:‘x").is_ok());
    }

    #[test]
    fn placeholders_are_found_and_filled() {
        let text = "type {{ user }} and {{pw}} then {{user}} {{unclosed";
        assert_eq!(placeholders(text), vec!["user", "pw"]);
        let filled = fill(text, |n| (n == "user").then(|| "alice".to_owned()));
        assert_eq!(filled, "type alice and {{pw}} then alice {{unclosed");
        assert_eq!(fill("{{a}}{{b}}", |n| Some(n.to_uppercase())), "AB");
    }
}
