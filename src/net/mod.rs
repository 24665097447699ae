//! Container networking: what the daemon serves inside containers' network namespaces.

pub mod dns;
