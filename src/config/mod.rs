//! Configuration: YAML with `${ENV}` interpolation → typed definitions → cross-checked.
//!
//! [`load`] and [`load_str`] report every problem at once, each with file, line, column, key
//! path and what was expected. Nothing here binds a socket or opens a connection.

mod decode;
mod middleware;
pub mod node;
mod route;
mod schema;
mod tls;
mod upstream;
mod validate;
pub mod view;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use decode::{ByteSize, Located, Problem};
pub use middleware::*;
pub use node::Pos;
pub use route::*;
pub use schema::*;
pub use tls::*;
pub use upstream::*;

/// A config that could not be used, with everything wrong with it.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "{}: {n} problem{}", self.file.display(), if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            writeln!(f, "{}:{p}", self.file.display())?;
        }
        Ok(())
    }
}

/// Reads and checks a config file, interpolating from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        problems: vec![Problem { pos: Pos::default(), path: String::new(), message: format!("cannot read file: {e}") }],
    })?;
    load_str(&text, path, std::env::vars().collect())
}

/// Checks config text; `file` names it in messages, `env` supplies `${VAR}` values.
pub fn load_str(text: &str, file: &Path, env: HashMap<String, String>) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError { file: file.to_owned(), problems };
    let tree = node::parse(text, env)
        .map_err(|e| fail(vec![Problem { pos: e.pos.unwrap_or_default(), path: String::new(), message: e.message }]))?;
    let mut problems = decode::Problems::default();
    let mut config = schema::decode_config(&tree, &mut problems);
    validate::validate(&config, &mut problems);
    if problems.0.is_empty() {
        config.document = std::sync::Arc::new(view::redacted(&tree));
        Ok(config)
    } else {
        let mut list = problems.0;
        list.sort_by_key(|p| (p.pos.line, p.pos.column));
        Err(fail(list))
    }
}

#[cfg(test)]
mod tests;
