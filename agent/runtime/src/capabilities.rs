//! Capability sets of the container process: parsed from the spec into bitmasks, then
//! applied with raw `prctl`/`capset` calls (no allocation, safe after fork).

use crate::error::{Error, Result};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};
use std::str::FromStr;

/// The five capability sets as bitmasks (bit n = capability n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapabilityPlan {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

fn mask(set: &Option<Capabilities>, field: &str) -> Result<u64> {
    let mut m = 0u64;
    let mut names: Vec<String> = set.iter().flatten().map(|c| c.to_string()).collect();
    names.sort();
    for name in names {
        let cap = caps::Capability::from_str(&format!("CAP_{name}"))
            .map_err(|_| Error::config(field, format!("unknown capability CAP_{name}")))?;
        m |= cap.bitmask();
    }
    Ok(m)
}

impl CapabilityPlan {
    /// Converts the spec's sets; `field` is the JSON path for errors.
    pub fn new(c: &LinuxCapabilities, field: &str) -> Result<CapabilityPlan> {
        Ok(CapabilityPlan {
            bounding: mask(c.bounding(), &format!("{field}.bounding"))?,
            effective: mask(c.effective(), &format!("{field}.effective"))?,
            permitted: mask(c.permitted(), &format!("{field}.permitted"))?,
            inheritable: mask(c.inheritable(), &format!("{field}.inheritable"))?,
            ambient: mask(c.ambient(), &format!("{field}.ambient"))?,
        })
    }

    /// Drops every capability outside the bounding set (needs CAP_SETPCAP).
    pub fn apply_bounding(&self, last_cap: u32) -> std::io::Result<()> {
        for cap in 0..=last_cap.min(63) {
            if self.bounding & (1 << cap) == 0 {
                // SAFETY: plain prctl.
                let r =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets effective, permitted and inheritable sets, then raises the ambient ones.
    pub fn apply_sets(&self, last_cap: u32) -> std::io::Result<()> {
        let valid = if last_cap >= 63 {
            u64::MAX
        } else {
            (1u64 << (last_cap + 1)) - 1
        };
        let (e, p, i) = (
            self.effective & valid,
            self.permitted & valid,
            self.inheritable & valid,
        );
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let data = [
            Data {
                effective: e as u32,
                permitted: p as u32,
                inheritable: i as u32,
            },
            Data {
                effective: (e >> 32) as u32,
                permitted: (p >> 32) as u32,
                inheritable: (i >> 32) as u32,
            },
        ];
        // SAFETY: header and data are valid v3 capset arguments.
        let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for cap in 0..=last_cap.min(63) {
            if self.ambient & valid & (1 << cap) != 0 {
                // SAFETY: plain prctl.
                let r = unsafe {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        cap as libc::c_ulong,
                        0,
                        0,
                    )
                };
                // Like runc: an ambient capability missing from the permitted or
                // inheritable set cannot be raised; that is not fatal.
                let e = std::io::Error::last_os_error();
                if r < 0 && e.raw_os_error() != Some(libc::EPERM) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// The highest capability number the running kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_become_bitmasks() {
        let c: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_KILL","CAP_SYS_ADMIN"],"effective":["CAP_KILL"],"ambient":[]}"#,
        )
        .unwrap();
        let p = CapabilityPlan::new(&c, "process.capabilities").unwrap();
        assert_eq!(p.bounding, (1 << 5) | (1 << 21));
        assert_eq!(p.effective, 1 << 5);
        assert_eq!(p.permitted, 0);
        assert_eq!(p.ambient, 0);
    }
}
