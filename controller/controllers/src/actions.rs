//! What a reconcile step asks the driver to do: the explicit, ordered result of every
//! controller in this crate. The driver executes them through the API layer, in order.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    DaemonSetStatus, Deployment, DeploymentStatus, ReplicaSet, ReplicaSetStatus,
};
use k8s_openapi::api::batch::v1::JobStatus;
use k8s_openapi::api::core::v1::{
    Endpoints, NodeCondition, ObjectReference, Pod, PodCondition, Taint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Routine progress.
    Normal,
    /// Something a user should look at.
    Warning,
}

impl EventType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// An event about an object, as `kubectl describe` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The object the event is about.
    pub regarding: ObjectReference,
    /// Normal or Warning.
    pub type_: EventType,
    /// CamelCase reason (`ScalingReplicaSet`, `SuccessfulCreate`, …).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl Event {
    /// A `Normal` event.
    pub fn normal(regarding: ObjectReference, reason: &str, message: impl Into<String>) -> Event {
        Event {
            regarding,
            type_: EventType::Normal,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// A `Warning` event.
    pub fn warning(regarding: ObjectReference, reason: &str, message: impl Into<String>) -> Event {
        Event {
            regarding,
            type_: EventType::Warning,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// The `SuccessfulCreate` event the driver records once a [`Action::CreatePod`] got
    /// its generated name.
    pub fn created_pod(owner: ObjectReference, pod_name: &str) -> Event {
        Event::normal(
            owner,
            "SuccessfulCreate",
            format!("Created pod: {pod_name}"),
        )
    }
}

/// A reference to an object for events.
pub fn reference(api_version: &str, kind: &str, meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.to_owned()),
        kind: Some(kind.to_owned()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        ..ObjectReference::default()
    }
}

/// A status update for one object (written to its `status` subresource).
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// A Deployment's status.
    Deployment(DeploymentStatus),
    /// A ReplicaSet's status.
    ReplicaSet(ReplicaSetStatus),
    /// A DaemonSet's status.
    DaemonSet(DaemonSetStatus),
    /// A Job's status.
    Job(JobStatus),
}

/// One step for the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create this pod (it has `generateName` and a controller owner reference); on
    /// success record [`Event::created_pod`] for `owner`.
    CreatePod {
        /// The pod to create.
        pod: Box<Pod>,
        /// The controller creating it, for the `SuccessfulCreate` event.
        owner: ObjectReference,
    },
    /// Bind a pod to a node (the `binding` subresource).
    BindPod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The node.
        node: String,
    },
    /// Add a controller owner reference to an orphan pod the controller's selector matches.
    AdoptPod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The reference to add.
        owner: OwnerReference,
    },
    /// Remove the controller's owner reference from a pod its selector no longer matches.
    ReleasePod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The uid of the owner letting go.
        owner_uid: String,
    },
    /// Delete a pod.
    DeletePod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Replace a pod's condition of the same type in its status (e.g. Ready=False on an
    /// unreachable node).
    SetPodCondition {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The condition.
        condition: PodCondition,
    },
    /// Create a ReplicaSet.
    CreateReplicaSet(Box<ReplicaSet>),
    /// Update a ReplicaSet's metadata and spec (replicas, annotations).
    UpdateReplicaSet(Box<ReplicaSet>),
    /// Delete a ReplicaSet (old revision beyond the history limit).
    DeleteReplicaSet {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Update a Deployment's metadata and spec (revision annotation).
    UpdateDeployment(Box<Deployment>),
    /// Delete a finished Job (its TTL ran out); its pods go with it.
    DeleteJob {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Write the status of the object the controller reconciles.
    UpdateStatus(Box<Status>),
    /// Replace a node's condition of the same type.
    SetNodeCondition {
        /// The node.
        node: String,
        /// The condition.
        condition: NodeCondition,
    },
    /// Add a taint to a node.
    AddTaint {
        /// The node.
        node: String,
        /// The taint.
        taint: Taint,
    },
    /// Remove the taint with this key and effect from a node.
    RemoveTaint {
        /// The node.
        node: String,
        /// Taint key.
        key: String,
        /// Taint effect.
        effect: String,
    },
    /// Set `spec.podCIDR`/`spec.podCIDRs` of a node.
    SetPodCidr {
        /// The node.
        node: String,
        /// The CIDR, e.g. `10.42.3.0/24`.
        cidr: String,
    },
    /// Create or replace an Endpoints object.
    PutEndpoints(Box<Endpoints>),
    /// Delete an Endpoints object (its service is gone).
    DeleteEndpoints {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Record an event.
    Event(Event),
    /// Reconcile this object again after the delay even if nothing changes.
    Requeue(Duration),
}
