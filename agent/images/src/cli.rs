//! Command line of `flotilla-agent image`: pull, import, ls, rm, prune, inspect, pin,
//! mount and unmount, with per-layer and total progress on stderr.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::client::ClientOptions;
use crate::digest::Digest;
use crate::import::{ImportOptions, import_archive, import_folder};
use crate::platform::Platform;
use crate::progress::Event;
use crate::pull::{PullOptions, pull};
use crate::registries::{self, RegistriesConfig};
use crate::snapshot;
use crate::store::{DEFAULT_DATA_DIR, ImageStore};

/// Arguments of `flotilla-agent image`.
#[derive(Args, Debug)]
pub struct ImageArgs {
    /// The agent's data dir (images live in content/, layers/, snapshots/ below it).
    #[arg(long, global = true, default_value = DEFAULT_DATA_DIR, env = "FLOTILLA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Registries config (mirrors, credentials, TLS), like k3s's registries.yaml.
    #[arg(long, global = true)]
    pub registries: Option<PathBuf>,
    /// No progress output.
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pull an image from a registry.
    Pull {
        /// Image reference, e.g. docker.io/library/busybox:1.36 or name@sha256:…
        image: String,
        /// Platform to pick from a multi-platform image (default: this node's).
        #[arg(long)]
        platform: Option<String>,
        /// Protect the image from prune.
        #[arg(long)]
        pin: bool,
        /// Layers downloaded at once.
        #[arg(long, default_value_t = 3)]
        parallel: usize,
        /// Bandwidth limit per layer download, in bytes per second (k, M suffixes).
        #[arg(long, value_parser = parse_rate)]
        limit_rate: Option<u64>,
        /// Attempts per request before giving up.
        #[arg(long, default_value_t = 6)]
        attempts: u32,
    },
    /// Import oci-archive or docker-archive tar files (plain, gzip or zstd).
    Import {
        /// Archive files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Name for an unnamed image (or to rename a single-image archive).
        #[arg(long)]
        name: Option<String>,
        /// Platform to pick from multi-platform archives.
        #[arg(long)]
        platform: Option<String>,
        /// Protect the images from prune.
        #[arg(long)]
        pin: bool,
    },
    /// Import every archive of the air-gap folder (default <data-dir>/images), pinned.
    ImportAirgap {
        /// Folder to import from.
        dir: Option<PathBuf>,
    },
    /// List images.
    Ls {
        /// Print only names.
        #[arg(short = 'q', long)]
        names_only: bool,
    },
    /// Remove images and the content only they used.
    Rm {
        /// Images (name, digest or id prefix).
        #[arg(required = true)]
        images: Vec<String>,
        /// Remove even if pinned or used by a container.
        #[arg(long, short)]
        force: bool,
    },
    /// Remove every image no container uses and not pinned, and unreferenced content.
    Prune,
    /// Show an image's record, manifest and config as JSON.
    Inspect {
        /// Image (name, digest or id prefix).
        image: String,
    },
    /// Protect an image from prune.
    Pin {
        /// Image.
        image: String,
    },
    /// Let prune remove an image again.
    Unpin {
        /// Image.
        image: String,
    },
    /// Mount a container root filesystem: the image's layers under the container's
    /// own upper dir (overlayfs; a copy where overlay is unavailable).
    Mount {
        /// Image.
        image: String,
        /// Existing directory to mount at.
        target: PathBuf,
        /// Container id (names the snapshot).
        #[arg(long)]
        id: String,
        /// Copy the layers instead of using overlayfs.
        #[arg(long)]
        copy: bool,
    },
    /// Unmount a container root filesystem and delete its snapshot.
    Unmount {
        /// Container id.
        id: String,
    },
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1024),
        Some((i, 'm' | 'M')) => (&s[..i], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| n * mult)
        .ok_or_else(|| format!("invalid rate {s:?}: expected bytes per second, e.g. 500k or 2M"))
}

/// Runs the command.
pub fn main(args: ImageArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn platform(p: Option<String>) -> Result<Platform> {
    match p {
        Some(p) => p.parse().map_err(anyhow::Error::msg),
        None => Ok(Platform::host()),
    }
}

fn run(args: ImageArgs) -> Result<()> {
    let store = ImageStore::open(&args.data_dir)?;
    let printer = Printer::new(args.quiet);
    let progress = |e: &Event| printer.event(e);
    match args.command {
        Command::Pull {
            image,
            platform: p,
            pin,
            parallel,
            limit_rate,
            attempts,
        } => {
            let registries = match &args.registries {
                Some(path) => RegistriesConfig::load(path, true)?,
                None => RegistriesConfig::load(Path::new(registries::DEFAULT_PATH), false)?,
            };
            let opts = PullOptions {
                platform: platform(p)?,
                registries,
                pinned: pin,
                parallel,
                client: ClientOptions {
                    attempts: attempts.max(1),
                    limit_rate,
                    ..ClientOptions::default()
                },
                progress: &progress,
            };
            let rec = pull(&store, &image, &opts)?;
            println!("{} {}", rec.name, rec.manifest);
        }
        Command::Import {
            files,
            name,
            platform: p,
            pin,
        } => {
            let opts = ImportOptions {
                platform: platform(p)?,
                name,
                pinned: pin,
                progress: &progress,
            };
            for f in files {
                for rec in import_archive(&store, &f, &opts)? {
                    println!("{} {}", rec.name, rec.manifest);
                }
            }
        }
        Command::ImportAirgap { dir } => {
            let dir = dir.unwrap_or_else(|| args.data_dir.join("images"));
            let mut failed = 0;
            for (path, result) in import_folder(&store, &dir, &progress)? {
                match result {
                    Ok(recs) => recs
                        .iter()
                        .for_each(|r| println!("{} {}", r.name, r.manifest)),
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {}: {e:#}", path.display());
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} archive(s) could not be imported");
            }
        }
        Command::Ls { names_only } => {
            let images = store.list()?;
            if names_only {
                images.iter().for_each(|i| println!("{}", i.name));
            } else {
                println!("{:<60} {:<14} {:>10} PINNED", "NAME", "IMAGE ID", "SIZE");
                for i in images {
                    println!(
                        "{:<60} {:<14} {:>10} {}",
                        i.name,
                        i.config.short(),
                        human(i.size),
                        if i.pinned { "yes" } else { "" }
                    );
                }
            }
        }
        Command::Rm { images, force } => {
            for img in images {
                let (rec, gc) = store.remove(&img, force)?;
                println!(
                    "removed {} ({} blobs, {} layers freed)",
                    rec.name, gc.blobs, gc.layers
                );
            }
        }
        Command::Prune => {
            let (removed, gc) = store.prune()?;
            for r in &removed {
                println!("removed {r}");
            }
            println!(
                "pruned {} image(s), {} blob(s) ({}), {} layer(s), {} partial download(s)",
                removed.len(),
                gc.blobs,
                human(gc.bytes),
                gc.layers,
                gc.partials
            );
        }
        Command::Inspect { image } => {
            let rec = store.resolve(&image)?;
            let manifest: serde_json::Value =
                serde_json::from_slice(&store.content().read_blob(&rec.manifest)?)?;
            let config: serde_json::Value =
                serde_json::from_slice(&store.content().read_blob(&rec.config)?)?;
            let out = serde_json::json!({ "image": rec, "manifest": manifest, "config": config });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Command::Pin { image } => {
            println!("pinned {}", store.set_pinned(&image, true)?.name);
        }
        Command::Unpin { image } => {
            println!("unpinned {}", store.set_pinned(&image, false)?.name);
        }
        Command::Mount {
            image,
            target,
            id,
            copy,
        } => {
            let s = snapshot::mount(&store, &image, &id, &target, copy)?;
            println!("{} mounted at {} ({:?})", s.id, s.target.display(), s.mode);
        }
        Command::Unmount { id } => {
            snapshot::unmount(&store, &id).with_context(|| format!("unmounting {id}"))?;
            println!("{id} unmounted");
        }
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// Prints progress lines: per layer, and the total of the pull.
struct Printer {
    quiet: bool,
    state: Mutex<PrinterState>,
}

#[derive(Default)]
struct PrinterState {
    total: u64,
    done: BTreeMap<Digest, u64>,
}

impl Printer {
    fn new(quiet: bool) -> Printer {
        Printer {
            quiet,
            state: Mutex::new(PrinterState::default()),
        }
    }

    fn event(&self, e: &Event) {
        if self.quiet {
            return;
        }
        let mut st = self.state.lock().unwrap();
        let line = match e {
            Event::Resolved {
                name,
                manifest,
                layers,
                total_bytes,
            } => {
                st.total = *total_bytes;
                format!(
                    "{name}: manifest {manifest}, {layers} layer(s), {}",
                    human(*total_bytes)
                )
            }
            Event::Cached { digest, size } => {
                st.done.insert(digest.clone(), *size);
                format!("  {} already present", digest.short())
            }
            Event::Resumed { digest, offset } => {
                format!(
                    "  {} resuming at {} bytes (Range request)",
                    digest.short(),
                    offset
                )
            }
            Event::Downloading {
                digest,
                done,
                total,
            } => {
                st.done.insert(digest.clone(), *done);
                let sum: u64 = st.done.values().sum();
                format!(
                    "  {} downloading {} / {}   total {} / {}",
                    digest.short(),
                    human(*done),
                    human(*total),
                    human(sum),
                    human(st.total)
                )
            }
            Event::Downloaded { digest, size } => {
                st.done.insert(digest.clone(), *size);
                format!("  {} downloaded ({})", digest.short(), human(*size))
            }
            Event::Retrying {
                what,
                attempt,
                error,
            } => format!("  {what}: attempt {attempt} after error: {error}"),
            Event::Unpacked { diff_id, fresh } => {
                format!(
                    "  layer {} {}",
                    diff_id.short(),
                    if *fresh {
                        "unpacked"
                    } else {
                        "already unpacked"
                    }
                )
            }
            Event::Stored { name, manifest } => format!("stored {name} ({manifest})"),
        };
        eprintln!("{line}");
    }
}
