//! Placeholder: being built (see ARCHITECTURE.md).

pub mod cli;
