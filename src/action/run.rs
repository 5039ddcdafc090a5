//! Runs steps on a page: each primitive, with its waits, answering what it did and the step
//! resolved to the element it acted on (what the cache keeps). Also the model loop, which
//! turns the model's tool calls into the same steps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::error::ActionError;
use super::instruction::{self, ScrollTo, Step, Target};
use super::keys;
use super::model::{self, Call, ModelClient};
use super::page::{Found, Need, Page};
use crate::artifacts::SessionFiles;

/// Longest text a step answers (a whole page's text can be large).
const MAX_RESULT_CHARS: usize = 200_000;
/// Longest text of a step shown back to the model.
const MAX_TOOL_RESULT_CHARS: usize = 4_000;

/// What a step did: a sentence, or the text (or screenshot) it was asked to read.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Did(String),
    Read(String),
}

pub(crate) struct Runner {
    pub page: Page,
    /// The session's files: what an upload step may put on a file input.
    pub files: Option<Arc<SessionFiles>>,
    /// Where the session's browser may read a file put on an input.
    pub browser_downloads: Option<std::path::PathBuf>,
    pub values: HashMap<String, String>,
    /// How long an element or a text may take to appear.
    pub wait: Duration,
    /// How long a page may take to load.
    pub navigation: Duration,
}

/// A step that failed, and where.
pub(crate) struct Failed {
    pub index: usize,
    pub error: ActionError,
    pub done: Vec<Outcome>,
}

impl Runner {
    fn fill(&self, text: &str) -> String {
        instruction::fill(text, |name| self.values.get(name).cloned())
    }

    /// Runs `steps` in order, stopping at the first failure.
    pub(crate) async fn run_all(
        &mut self,
        steps: &[Step],
        wait: Duration,
    ) -> Result<(Vec<Outcome>, Vec<Step>), Failed> {
        let mut outcomes = Vec::new();
        let mut resolved = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            match self.run(step, wait).await {
                Ok((outcome, step)) => {
                    outcomes.push(outcome);
                    resolved.push(step);
                }
                Err(error) => {
                    return Err(Failed {
                        index,
                        error,
                        done: outcomes,
                    });
                }
            }
        }
        Ok((outcomes, resolved))
    }

    async fn find(&mut self, target: &Target, need: Need, wait: Duration) -> Result<Found, ActionError> {
        let spec = target.spec(&|s| self.fill(s));
        let described = self.fill(&target.described);
        self.page.locate(&spec, need, &described, wait).await
    }

    /// Runs one step; answers what it did and the step pinned to the element it found.
    pub(crate) async fn run(&mut self, step: &Step, wait: Duration) -> Result<(Outcome, Step), ActionError> {
        let (found, resolved) = self.resolve(step, wait).await?;
        let outcome = match (step, found) {
            (Step::Goto { url }, _) => {
                let url = normalize_url(&self.fill(url))?;
                self.page.navigate(&url, self.navigation).await?;
                let at = self.page.eval("location.href").await?;
                Outcome::Did(format!("Opened {}.", at.as_str().unwrap_or(&url)))
            }
            (Step::Back | Step::Forward | Step::Reload, _) => {
                let (how, said) = match step {
                    Step::Back => ("back", "Went back"),
                    Step::Forward => ("forward", "Went forward"),
                    _ => ("reload", "Reloaded the page"),
                };
                self.page.history(how, self.navigation).await?;
                let at = self.page.eval("location.href").await?;
                Outcome::Did(format!("{said}; the page is at {}.", at.as_str().unwrap_or("")))
            }
            (Step::Click { target, count }, Some(found)) => {
                let mut events = self.page.watch();
                self.page.click(found.x, found.y, *count).await?;
                let moved = self.page.settle(&mut events, self.navigation).await?;
                let verb = if *count == 2 { "Double-clicked" } else { "Clicked" };
                Outcome::Did(format!("{verb} {}.{}", self.described(target), moved_to(moved)))
            }
            (Step::Type { target, text }, found) => self.type_text(target.as_ref(), text, found.as_ref()).await?,
            (Step::Press { key, target }, found) => self.press_key(key, target.as_ref(), found.as_ref()).await?,
            (Step::Select { target, option }, Some(found)) => self.select(target, option, &found).await?,
            (Step::Check { target, on }, Some(found)) => self.check(target, *on, &found).await?,
            (Step::Upload { target, file }, Some(found)) => self.upload(target, file, &found).await?,
            (Step::Hover { target }, Some(found)) => {
                self.page.hover(found.x, found.y).await?;
                Outcome::Did(format!("Moved the mouse over {}.", self.described(target)))
            }
            (Step::Scroll { to }, _) => self.scroll(to).await?,
            (Step::WaitText { text }, _) => {
                let text = self.fill(text);
                if !self.page.wait_until("hasText", &[json!(text)], wait).await? {
                    return Err(ActionError::new(format!(
                        "The text \"{text}\" did not appear within {} s",
                        wait.as_secs_f64()
                    )));
                }
                Outcome::Did(format!("The text \"{text}\" appeared."))
            }
            (Step::WaitFor { target }, Some(_)) => {
                Outcome::Did(format!("{} appeared.", capitalized(&self.described(target))))
            }
            (Step::WaitLoad, _) => self.wait_load().await?,
            (Step::Sleep { ms }, _) => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                Outcome::Did(format!("Waited {} s.", *ms as f64 / 1000.0))
            }
            (Step::ReadText { target: None }, _) => Outcome::Read(truncate(
                self.page.helper("pageText", &[]).await?.as_str().unwrap_or(""),
            )),
            (Step::ReadText { target: Some(_) }, Some(found)) => Outcome::Read(truncate(
                self.page
                    .helper("readText", &[json!(found.selector)])
                    .await?
                    .as_str()
                    .unwrap_or(""),
            )),
            (Step::ReadTitle, _) => {
                Outcome::Read(self.page.eval("document.title").await?.as_str().unwrap_or("").into())
            }
            (Step::ReadUrl, _) => Outcome::Read(self.page.eval("location.href").await?.as_str().unwrap_or("").into()),
            (Step::Screenshot { full_page }, _) => Outcome::Read(self.page.screenshot(*full_page).await?),
            (step, None) => return Err(ActionError::new(format!("{step:?} needs an element"))),
        };
        Ok((outcome, resolved))
    }

    /// Finds the step's element, if it has one, and the step resolved to it (a CSS path
    /// and a fingerprint, for the cache).
    async fn resolve(&mut self, step: &Step, wait: Duration) -> Result<(Option<Found>, Step), ActionError> {
        let mut resolved = step.clone();
        let found = match resolved.target_mut() {
            Some(target) => {
                let need = match step {
                    Step::Click { .. } | Step::Check { .. } => Need::Click,
                    Step::Type { .. } | Step::Press { .. } | Step::Select { .. } => Need::Enabled,
                    // File inputs are often hidden behind a styled button.
                    Step::Upload { .. } => Need::Present,
                    // An empty element has no size, and its text ("") is still an answer.
                    Step::ReadText { .. } => Need::Present,
                    _ => Need::Visible,
                };
                let found = self.find(target, need, wait).await?;
                // One named through a variable is looked for again at each run: pinned, the
                // next run (another value) would act on this run's element, and the cache
                // would keep the value it matched in the element's fingerprint.
                if target.has_placeholder() {
                    return Ok((Some(found), resolved));
                }
                *target = Target {
                    described: target.described.clone(),
                    role: None,
                    name: None,
                    css: Some(found.selector.clone()),
                    fingerprint: Some(found.fingerprint.clone()),
                };
                Some(found)
            }
            None => None,
        };
        Ok((found, resolved))
    }

    /// A target's description with its variables filled in.
    fn described(&self, target: &Target) -> String {
        instruction::fill(&target.described, |n| self.values.get(n).cloned())
    }

    async fn type_text(
        &mut self,
        target: Option<&Target>,
        text: &str,
        found: Option<&Found>,
    ) -> Result<Outcome, ActionError> {
        let value = self.fill(text);
        if let Some(found) = found {
            let focused = self.page.helper("focusForTyping", &[json!(found.selector)]).await?;
            if focused != true {
                return Err(ActionError::new(format!(
                    "{} did not take the keyboard focus",
                    capitalized(&self.described(target.expect("found implies a target")))
                )));
            }
        }
        if value.is_empty() {
            self.page
                .press(&keys::parse("Delete").expect("Delete is a key"))
                .await?;
        } else {
            self.page.insert_text(&value).await?;
        }
        // The typed text is never repeated: it is often a password.
        let chars = value.chars().count();
        Ok(Outcome::Did(match target {
            Some(t) if chars == 0 => format!("Cleared {}.", self.described(t)),
            Some(t) => format!("Typed {chars} characters into {}.", self.described(t)),
            None => format!("Typed {chars} characters."),
        }))
    }

    async fn press_key(
        &mut self,
        key: &str,
        target: Option<&Target>,
        found: Option<&Found>,
    ) -> Result<Outcome, ActionError> {
        let key = self.fill(key);
        let chord = keys::parse(&key).ok_or_else(|| ActionError::new(format!("\"{key}\" is not a key")))?;
        if let Some(found) = found {
            self.page.helper("focusForTyping", &[json!(found.selector)]).await?;
        }
        let mut events = self.page.watch();
        self.page.press(&chord).await?;
        let moved = self.page.settle(&mut events, self.navigation).await?;
        let place = target.map(|t| format!(" in {}", self.described(t))).unwrap_or_default();
        Ok(Outcome::Did(format!(
            "Pressed {}{place}.{}",
            chord.name(),
            moved_to(moved)
        )))
    }

    async fn upload(&mut self, target: &Target, file: &str, found: &Found) -> Result<Outcome, ActionError> {
        let name = self.fill(file);
        let path = self
            .files
            .as_ref()
            .and_then(|files| match &self.browser_downloads {
                Some(dir) => files.within_browser_reach(&name, dir).ok(),
                None => files.get(&name).ok().map(|(path, _)| path),
            })
            .map(|path| path.to_string_lossy().into_owned())
            .ok_or_else(|| {
                ActionError::new(format!(
                    "The session has no file named \"{name}\": upload it first (POST /public/sessions/{{id}}/files)"
                ))
            })?;
        let described = self.described(target);
        if !self.page.set_input_files(&found.selector, &[path]).await? {
            return Err(ActionError::new(format!(
                "{} is not a file input",
                capitalized(&described)
            )));
        }
        Ok(Outcome::Did(format!("Put \"{name}\" on {described}.")))
    }

    async fn select(&mut self, target: &Target, option: &str, found: &Found) -> Result<Outcome, ActionError> {
        let option = self.fill(option);
        let answer = self
            .page
            .helper("selectOption", &[json!(found.selector), json!(option)])
            .await?;
        let name = self.described(target);
        match answer["error"].as_str() {
            None => Ok(Outcome::Did(format!(
                "Selected \"{}\" in {name}.",
                answer["selected"].as_str().unwrap_or(&option)
            ))),
            Some("not-a-select") => Err(ActionError::new(format!(
                "{} is not a drop-down list (<select>): click it, then click the option",
                capitalized(&name)
            ))),
            Some("disabled-option") => Err(ActionError::new(format!(
                "The option \"{option}\" of {name} is disabled"
            ))),
            Some(_) => {
                let options: Vec<&str> = answer["options"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                Err(ActionError::new(format!(
                    "{} has no option \"{option}\"; its options are: {}",
                    capitalized(&name),
                    options.join(", ")
                )))
            }
        }
    }

    async fn check(&mut self, target: &Target, on: bool, found: &Found) -> Result<Outcome, ActionError> {
        let name = self.described(target);
        let word = if on { "checked" } else { "unchecked" };
        if self.page.helper("checked", &[json!(found.selector)]).await? == json!(on) {
            Ok(Outcome::Did(format!("{} was already {word}.", capitalized(&name))))
        } else {
            self.page.click(found.x, found.y, 1).await?;
            if self.page.helper("checked", &[json!(found.selector)]).await? != json!(on) {
                return Err(ActionError::new(format!("Clicking {name} did not leave it {word}")));
            }
            Ok(Outcome::Did(format!("{} {name}.", capitalized(word))))
        }
    }

    async fn scroll(&mut self, to: &ScrollTo) -> Result<Outcome, ActionError> {
        Ok(match to {
            ScrollTo::By(pixels) => {
                self.page.wheel(*pixels as f64).await?;
                let way = if *pixels < 0 { "up" } else { "down" };
                Outcome::Did(format!("Scrolled {way} {} pixels.", pixels.abs()))
            }
            ScrollTo::Top | ScrollTo::Bottom => {
                let bottom = matches!(to, ScrollTo::Bottom);
                self.page.helper("scrollToEnd", &[json!(bottom)]).await?;
                Outcome::Did(format!(
                    "Scrolled to the {} of the page.",
                    if bottom { "bottom" } else { "top" }
                ))
            }
            ScrollTo::Element(target) => Outcome::Did(format!("Scrolled to {}.", self.described(target))),
        })
    }

    async fn wait_load(&mut self) -> Result<Outcome, ActionError> {
        let deadline = tokio::time::Instant::now() + self.navigation;
        while self.page.eval("document.readyState").await? != json!("complete") {
            if tokio::time::Instant::now() >= deadline {
                return Err(ActionError::new("The page did not finish loading in time"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Outcome::Did("The page finished loading.".into()))
    }

    /// Lets the model carry out `action`, step by step; answers its result, the steps it took
    /// and the number of model calls made (the credits), whatever the outcome.
    pub(crate) async fn run_with_model(
        &mut self,
        client: &ModelClient,
        action: &str,
        max_calls: u32,
    ) -> (Result<(String, Vec<Step>), ActionError>, u32) {
        let mut calls = 0;
        let result = self.model_loop(client, action, max_calls, &mut calls).await;
        (result, calls)
    }

    async fn model_loop(
        &mut self,
        client: &ModelClient,
        action: &str,
        max_calls: u32,
        calls: &mut u32,
    ) -> Result<(String, Vec<Step>), ActionError> {
        let mut names: Vec<String> = self.values.keys().cloned().collect();
        names.sort();
        let tools = model::tools();
        let mut snapshot = self.snapshot().await?;
        let mut messages = vec![
            json!({"role": "system", "content": model::system_prompt(&names)}),
            json!({"role": "user", "content": format!("Instruction: {action}\n\n{}", model::render_snapshot(&snapshot))}),
        ];
        let mut steps = Vec::new();
        while *calls < max_calls {
            *calls += 1;
            let message = client
                .complete(&messages, &tools)
                .await
                .map_err(|e| ActionError::new(format!("The model could not be asked: {e}")))?;
            let tool_calls = message["tool_calls"].as_array().cloned().unwrap_or_default();
            messages.push(message.clone());
            if tool_calls.is_empty() {
                let said = message["content"].as_str().unwrap_or("").trim().to_owned();
                return Ok((if said.is_empty() { "Done.".into() } else { said }, steps));
            }
            for call in &tool_calls {
                let name = call["function"]["name"].as_str().unwrap_or("");
                // The protocol sends arguments as a JSON string; some compatible servers
                // send the object itself.
                let arguments = match &call["function"]["arguments"] {
                    Value::String(s) => s.clone(),
                    Value::Null => "{}".to_owned(),
                    other => other.to_string(),
                };
                let content = match model::read_call(name, &arguments, &snapshot) {
                    Ok(Call::Done(result)) => return Ok((result, steps)),
                    Ok(Call::Fail(reason)) => {
                        return Err(ActionError::new(format!("The model could not do it: {reason}")));
                    }
                    Ok(Call::Step(step)) => match self.run(&step, self.wait).await {
                        Ok((outcome, resolved)) => {
                            steps.push(resolved);
                            match outcome {
                                Outcome::Did(s) => s,
                                Outcome::Read(text) => text.chars().take(MAX_TOOL_RESULT_CHARS).collect(),
                            }
                        }
                        Err(e) => format!("Error: {e}"),
                    },
                    Err(e) => format!("Error: {e}"),
                };
                messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": content}));
            }
            snapshot = self.snapshot().await?;
            if let Some(last) = messages.last_mut() {
                let content = format!(
                    "{}\n\n{}",
                    last["content"].as_str().unwrap_or(""),
                    model::render_snapshot(&snapshot)
                );
                last["content"] = json!(content);
            }
        }
        Err(ActionError::new(format!(
            "The model did not finish within {max_calls} calls"
        )))
    }

    async fn snapshot(&mut self) -> Result<Value, ActionError> {
        self.page.helper("snapshot", &[json!(model::SNAPSHOT_ELEMENTS)]).await
    }
}

/// The answer's `result`: the last text read, or else every sentence of what was done.
pub(crate) fn summarize(outcomes: &[Outcome]) -> String {
    if let Some(text) = outcomes.iter().rev().find_map(|o| match o {
        Outcome::Read(t) => Some(t.clone()),
        Outcome::Did(_) => None,
    }) {
        return text;
    }
    let sentences: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Did(s) => Some(s.as_str()),
            Outcome::Read(_) => None,
        })
        .collect();
    sentences.join(" ")
}

fn moved_to(url: Option<String>) -> String {
    url.map(|u| format!(" The page is now at {u}.")).unwrap_or_default()
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_RESULT_CHARS {
        return text.to_owned();
    }
    let mut t: String = text.chars().take(MAX_RESULT_CHARS).collect();
    t.push_str(" […]");
    t
}

/// A URL as a person writes it ("example.com", "localhost:3000/x") made whole; only web
/// pages may be opened (a `file:` URL would read the broker's own disk).
pub(crate) fn normalize_url(raw: &str) -> Result<String, ActionError> {
    let raw = raw.trim();
    let lower = raw.to_ascii_lowercase();
    let with_scheme = if lower.contains("://") || lower.starts_with("about:") {
        raw.to_owned()
    } else if lower.starts_with("localhost") || lower.starts_with("127.") || lower.starts_with('[') {
        format!("http://{raw}")
    } else {
        format!("https://{raw}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| ActionError::new(format!("\"{raw}\" is not a URL: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(url.to_string()),
        "about" if url.as_str() == "about:blank" => Ok(url.to_string()),
        other => Err(ActionError::new(format!(
            "Only http and https pages can be opened by an action, not {other}:"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_completed_and_only_web_pages_opened() {
        assert_eq!(normalize_url("example.com/a").unwrap(), "https://example.com/a");
        assert_eq!(normalize_url("localhost:8080/x").unwrap(), "http://localhost:8080/x");
        assert_eq!(normalize_url("http://127.0.0.1:9/").unwrap(), "http://127.0.0.1:9/");
        assert_eq!(normalize_url("about:blank").unwrap(), "about:blank");
        for bad in [
            "file:///etc/passwd",
            "javascript:alert(1)",
            "chrome://settings",
            "data:text/html,x",
            "http://",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_result_is_the_last_read_or_the_sentences() {
        let did = |s: &str| Outcome::Did(s.into());
        assert_eq!(
            summarize(&[did("Clicked A."), did("Typed 3 characters.")]),
            "Clicked A. Typed 3 characters."
        );
        assert_eq!(
            summarize(&[did("Clicked A."), Outcome::Read("Welcome".into()), did("x")]),
            "Welcome"
        );
        assert_eq!(summarize(&[]), "");
    }
}
