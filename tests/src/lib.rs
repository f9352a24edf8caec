//! The end-to-end test harness (see ARCHITECTURE.md).
