//! Pod lifecycle on a node: turns the desired [`flotilla_shared::pod::PodSpec`]s into
//! running containers and reports their status.
