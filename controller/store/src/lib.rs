//! The controller object store (see ARCHITECTURE.md).
