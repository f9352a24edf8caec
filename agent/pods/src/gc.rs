//! At start, before the workers run: removes containers and root filesystems that
//! belong to this node's pods directory but to no live attempt on record (an agent
//! that died between starting a container and recording it, or a pod forgotten while
//! a removal was under way).

use std::collections::HashSet;
use std::path::Path;

use flotilla_images::store::ImageStore;
use flotilla_runtime::Runtime;

use crate::state::PodRecord;

/// Deletes runtime containers and snapshots under `pods_dir` unknown to `records`,
/// then the sandboxes, volumes, cgroups and directories of pods without a record;
/// returns what it removed.
pub fn orphans(
    records: &[PodRecord],
    runtime: &Runtime,
    images: &ImageStore,
    pods_dir: &Path,
    cgroup_root: &str,
) -> Vec<String> {
    let live: HashSet<String> = records
        .iter()
        .flat_map(|r| r.init_containers.iter().chain(r.containers.iter()))
        .filter_map(|c| c.running.as_ref().map(|a| a.id.clone()))
        .collect();
    let mut removed = Vec::new();
    for st in runtime.list().unwrap_or_default() {
        if live.contains(&st.id) || !st.bundle.starts_with(pods_dir) {
            continue;
        }
        match runtime.load(&st.id).map(|c| c.delete(true)) {
            Ok(Ok(())) => removed.push(st.id.clone()),
            Ok(Err(e)) | Err(e) => tracing::warn!("removing orphan container {}: {e}", st.id),
        }
    }
    let snapshots = images.data_dir().join("snapshots");
    for e in std::fs::read_dir(&snapshots)
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        let target = std::fs::read_to_string(e.path().join("target")).unwrap_or_default();
        if live.contains(&id) || !Path::new(&target).starts_with(pods_dir) {
            continue;
        }
        match flotilla_images::snapshot::unmount(images, &id) {
            Ok(()) => {
                if !removed.contains(&id) {
                    removed.push(id);
                }
            }
            Err(e) => tracing::warn!("removing orphan snapshot {id}: {e:#}"),
        }
    }
    let known: HashSet<&str> = records.iter().map(|r| r.spec.uid.as_str()).collect();
    for e in std::fs::read_dir(pods_dir).into_iter().flatten().flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        if known.contains(uid.as_str()) {
            continue;
        }
        let dir = e.path();
        let result = crate::volumes::teardown(&dir)
            .and_then(|()| crate::sandbox::teardown(&dir))
            .and_then(|()| {
                crate::sandbox::remove_cgroup(&format!(
                    "{}/pod-{uid}",
                    cgroup_root.trim_end_matches('/')
                ))
            })
            .and_then(|()| Ok(std::fs::remove_dir_all(&dir)?));
        match result {
            Ok(()) => removed.push(format!("pod {uid}")),
            Err(e) => tracing::warn!("removing orphan pod dir {}: {e:#}", dir.display()),
        }
    }
    removed
}
