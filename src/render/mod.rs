//! One-call renders: open a page in a fresh context session (or a given session), wait
//! for it, produce a screenshot, a PDF, its HTML, its main text as markdown or what CSS
//! selectors pick out, and end the session. The HTTP handlers (`http/render.rs`) and any
//! other front door call [`run`] with a checked [`RenderJob`].

mod error;
mod options;
mod page;
mod run;

pub use error::RenderError;
pub use options::{CREATE_FIELDS, Kind, RenderJob, parse};
pub use page::Produced;
pub use run::{Target, run};
