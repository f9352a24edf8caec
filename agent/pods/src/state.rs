//! The node's local memory of its pods: one redb file `<data_dir>/state.redb` holding,
//! per pod uid, the desired spec and the container records (attempts, restart counts,
//! last states, back-off). The agent restarts from it alone.

use std::path::Path;

use anyhow::{Context, Result};
use flotilla_shared::pod::{ContainerState, PodSpec};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");

/// What the node knows about one pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub spec: PodSpec,
    /// When the agent accepted the pod (Unix seconds).
    pub start_time: i64,
    pub init_containers: Vec<ContainerRecord>,
    pub containers: Vec<ContainerRecord>,
    /// Set when the pod was asked to go away without a deletion first (`remove`).
    pub removing: bool,
    /// Every container stopped and the pod's resources are released.
    pub terminated: bool,
    /// Pod-level failure reason (`DeadlineExceeded`), empty when none.
    pub reason: String,
    pub message: String,
}

/// One container of a pod across its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub image_id: String,
    /// Attempts started so far (the current or last attempt is `attempts - 1`).
    pub attempts: u32,
    pub restart_count: u32,
    /// The live attempt, if any.
    pub running: Option<Attempt>,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
    /// No new attempt before this time (Unix milliseconds).
    pub backoff_until_ms: i64,
    /// The current back-off step in seconds (0: none yet).
    pub backoff_secs: u64,
    /// Why the last attempt was stopped by the agent (`liveness`), empty otherwise.
    pub kill_reason: String,
    /// The image the live or last attempt was started from.
    #[serde(default)]
    pub image: String,
}

/// A started attempt of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Runtime container id.
    pub id: String,
    pub index: u32,
    pub started_at: i64,
    /// Pid of its shim.
    pub shim_pid: i32,
}

impl ContainerRecord {
    /// A container that has not been started.
    pub fn new(name: &str) -> ContainerRecord {
        ContainerRecord {
            name: name.to_string(),
            image_id: String::new(),
            attempts: 0,
            restart_count: 0,
            running: None,
            state: ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last_state: None,
            backoff_until_ms: 0,
            backoff_secs: 0,
            kill_reason: String::new(),
            image: String::new(),
        }
    }
}

/// The redb file.
pub struct State {
    db: Database,
}

impl State {
    /// Opens (or creates) `<data_dir>/state.redb`.
    pub fn open(data_dir: &Path) -> Result<State> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let path = data_dir.join("state.redb");
        let db = Database::create(&path).with_context(|| format!("opening {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(PODS)?;
        txn.commit()?;
        Ok(State { db })
    }

    /// Every pod record.
    pub fn load(&self) -> Result<Vec<PodRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PODS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let rec: PodRecord = serde_json::from_slice(v.value())
                .with_context(|| format!("pod record {} in state.redb", k.value()))?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Stores a record (durable on return).
    pub fn put(&self, rec: &PodRecord) -> Result<()> {
        let bytes = serde_json::to_vec(rec)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(PODS)?;
            table.insert(rec.spec.uid.as_str(), bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Forgets a pod.
    pub fn delete(&self, uid: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(PODS)?;
            table.remove(uid)?;
        }
        txn.commit()?;
        Ok(())
    }
}
