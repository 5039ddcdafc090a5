//! What the MCP server's page tools do in a session's browser: its first tab driven for
//! an agent (`page`), on the references its latest snapshot gave out (`references`). The
//! transport and the tools' arguments are `http/mcp.rs`'s.

mod error;
mod page;
pub mod references;

pub use error::PageError;
pub use page::{Page, missing};
