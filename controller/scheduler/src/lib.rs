//! Flotilla's scheduler: kube-scheduler's placement decisions as pure functions.
//!
//! No I/O: the controller's driver feeds a [`Cluster`] from watches (nodes, pods), asks
//! [`Cluster::schedule`] for each unbound pod, writes the binding (or the
//! `PodScheduled=False` condition and a `FailedScheduling` event from [`Unschedulable`]),
//! and tells the cluster with [`Cluster::assume`]. The building blocks — selectors,
//! taints and tolerations, resource requests — are public for the controllers that need
//! the same rules (the DaemonSet controller's node eligibility).
//!
//! - [`resources`]: pod requests (init-container and sidecar rule) and resource sums;
//! - [`selectors`]: label selectors and node affinity terms;
//! - [`taints`]: taints, tolerations and the node condition taints;
//! - [`ports`]: host port claims and collisions;
//! - [`affinity`]: inter-pod (anti-)affinity terms;
//! - [`cluster`]: per-node aggregates, filters, scores and the decision;
//! - [`unschedulable`]: the failure message, as kube-scheduler words it.

pub mod affinity;
pub mod cluster;
pub mod ports;
pub mod resources;
pub mod selectors;
pub mod taints;
pub mod unschedulable;

pub use cluster::{Cluster, HOSTNAME_LABEL, owner_key, schedule};
pub use unschedulable::Unschedulable;
