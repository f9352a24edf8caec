//! Placeholder: being built (see ARCHITECTURE.md).
