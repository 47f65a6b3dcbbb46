//! Request routing: path normalisation and the compiled route table.
//!
//! Routing is pure: it never touches the network, and the same normal path it matches on is
//! the one the rest of the request path uses.

mod matcher;
mod normalize;

pub use matcher::{RouteSpec, Router, compile_regex, find_ties, prefix_segments};
pub use normalize::{PathError, normalize_path};

/// Lower-cased host without port or trailing dot, from a Host header or an authority.
/// Borrowed unless the host has upper-case letters.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests;
