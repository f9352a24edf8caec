//! `flotilla-controller`: the Flotilla control plane binary.

mod api;
mod bootstrap;
mod drive;
mod exec;
mod hub;
mod loops;
mod pki;
mod server;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The Flotilla control plane: a Kubernetes-compatible API server on redb, the
/// scheduler and controllers, and the hub that node agents connect to.
#[derive(Parser)]
#[command(name = "flotilla-controller", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Kubernetes API over HTTPS.
    Serve {
        /// Where the store, the PKI, the tokens and admin.kubeconfig live.
        #[arg(long, default_value = "/var/lib/flotilla/controller")]
        data_dir: PathBuf,
        /// Address and port to listen on.
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: SocketAddr,
        /// Extra DNS names or IP addresses for the serving certificate.
        #[arg(long = "tls-san")]
        tls_san: Vec<String>,
        /// Scheduler and controller settings.
        #[command(flatten)]
        drive: drive::Flags,
        /// Address and port the agents dial (the agent link, mutual TLS).
        #[arg(long, env = "FLOTILLA_HUB_LISTEN", default_value = "0.0.0.0:6444")]
        hub_listen: SocketAddr,
    },
    /// Write a kubeconfig with a client certificate for a node identity
    /// (system:node:<name> in group system:nodes).
    NodeCredential {
        #[arg(long, default_value = "/var/lib/flotilla/controller")]
        data_dir: PathBuf,
        /// The node name.
        #[arg(long)]
        name: String,
        /// The API server URL to put in the kubeconfig.
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        server: String,
        /// Output file (mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, not in journald or log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            tls_san,
            drive,
            hub_listen,
        } => serve(data_dir, listen, tls_san, drive, hub_listen),
        Command::NodeCredential {
            data_dir,
            name,
            server,
            out,
        } => {
            let ca = pki::Ca::load_or_create(&data_dir)?;
            if name.is_empty() || name.contains(':') {
                anyhow::bail!("invalid node name {name:?}");
            }
            let cert = ca.issue_client(&format!("system:node:{name}"), &["system:nodes"])?;
            pki::write_kubeconfig(
                &out,
                &server,
                &ca.cert_pem,
                &format!("node-{name}"),
                pki::Credential::Cert(&cert),
            )?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}

fn serve(
    data_dir: PathBuf,
    listen: SocketAddr,
    tls_san: Vec<String>,
    drive: drive::Flags,
    hub_listen: SocketAddr,
) -> Result<()> {
    loops::ipalloc::configure(
        &drive.service_cidr,
        (
            drive.service_node_port_range.first,
            drive.service_node_port_range.last,
        ),
    );
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    std::fs::set_permissions(
        &data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .with_context(|| format!("securing data directory {}", data_dir.display()))?;
    let ca = pki::Ca::load_or_create(&data_dir)?;
    let (dns, ips) = pki::serving_sans(&tls_san);
    let serving = ca.issue_serving(&dns, &ips)?;
    let tokens = pki::load_or_create_tokens(&data_dir)?;
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else if listen.is_ipv6() {
        format!("[{}]", listen.ip())
    } else {
        listen.ip().to_string()
    };
    let url = format!("https://{host}:{}", listen.port());
    for t in &tokens {
        let file = match t.user.as_str() {
            "admin" => pki::admin_kubeconfig(&data_dir),
            "viewer" => data_dir.join("viewer.kubeconfig"),
            _ => continue,
        };
        pki::write_kubeconfig(
            &file,
            &url,
            &ca.cert_pem,
            &t.user,
            pki::Credential::Token(&t.token),
        )?;
    }
    let store = flotilla_store::Store::open(&data_dir.join("store.redb"), Default::default())
        .context("opening the store")?;
    let tls = server::tls_config(&ca.cert_pem, &serving.cert_pem, &serving.key_pem)?;
    let (gc_tx, gc_rx) = smol::channel::bounded(1);
    let api = std::sync::Arc::new(api::Api {
        store,
        auth: api::auth::Authenticator::new(&tokens),
        gc_wake: gc_tx,
        server_address: format!("{host}:{}", listen.port()),
    });
    smol::block_on(async {
        bootstrap::run(&api).await?;
        let listener = smol::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        exec::spawn(loops::gc::run(api.clone(), gc_rx));
        hub::spawn(
            api.clone(),
            &data_dir,
            &serving,
            hub::Config {
                listen: hub_listen,
                cluster_cidr: drive.cluster_cidr.clone(),
                service_cidr: drive.service_cidr.clone(),
            },
        )?;
        drive::spawn(api.clone(), drive)?;
        let listen = listener.local_addr().unwrap_or(listen);
        tracing::info!(%listen, kubeconfig = %pki::admin_kubeconfig(&data_dir).display(), "serving the Kubernetes API");
        server::serve(api, listener, tls).await
    })
}
