//! What the MCP server's page tools do in a session's browser: its first tab driven for
//! an agent (`page`). The transport and the tools' arguments are `http/mcp.rs`'s.

mod error;
mod page;

pub use error::PageError;
pub use page::Page;
