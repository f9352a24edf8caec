//! Flotilla's controllers as pure reconcile functions (kube-rs's model):
//! `reconcile(observed state, now) -> Vec<Action>`, no I/O, no clock.
//!
//! A driver in the controller binary feeds each one from watches and executes the
//! returned [`actions::Action`]s through the API layer. State that must survive a
//! restart (allocations) is rebuilt from stored objects.
//!
//! - [`replicaset`]: keep N pods, delete the least valuable first;
//! - [`deployment`]: rolling and recreate rollouts, revisions, history, conditions, undo;
//! - [`daemonset`]: one pod per eligible node, rolling update;
//! - [`job`]: completions, parallelism, backoff limit, deadline, TTL;
//! - [`node_lifecycle`]: Ready from leases, unreachable taints, evictions;
//! - [`scheduling`]: a scheduler decision as bind/condition actions and events;
//! - [`endpoints`]: ready pod addresses behind each service;
//! - [`allocators`]: ClusterIPs, NodePorts and per-node pod CIDRs;
//! - [`actions`], [`pods`], [`hash`], [`intstr`]: shared vocabulary and helpers.

pub mod actions;
pub mod allocators;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod hash;
pub mod intstr;
pub mod job;
pub mod node_lifecycle;
pub mod pods;
pub mod replicaset;
pub mod scheduling;

pub use actions::{Action, Event, EventType, Status};
