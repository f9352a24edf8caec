//! Control loops that run inside the controller next to the API: garbage collection
//! by ownerReferences, namespace deletion, and service IP allocation.

pub mod gc;
pub mod ipalloc;
