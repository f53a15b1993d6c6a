//! `berth` binary: argument parsing only; the work lives in the `berth_cli` library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_api::rest::{CreateSite, Site};
use berth_cli::output::{self, Format};
use berth_cli::{client, registry, up, worker, ApiClient, ClientError};
use berth_images::credentials;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Run sites from OCI images on your own Linux fleet"
)]
struct Cli {
    /// Controller REST API.
    #[arg(
        long,
        global = true,
        env = "BERTH_API",
        default_value = "http://127.0.0.1:7700"
    )]
    api: String,
    /// File holding the API token (BERTH_TOKEN overrides it).
    #[arg(long, global = true, env = "BERTH_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a whole Berth (controller, file server, sandboxd, agent, front end) on this machine.
    Up {
        #[arg(long, default_value = "/var/lib/berth")]
        state_dir: PathBuf,
        /// Controller API port; the other ports follow it (see ARCHITECTURE.md).
        #[arg(long, default_value_t = berth_api::ports::CONTROLLER_API)]
        port_base: u16,
        /// Sites are served as <site>.<domain>.
        #[arg(long, default_value = "localhost")]
        domain: String,
        /// This worker's name (default: the host name).
        #[arg(long)]
        worker_name: Option<String>,
        /// Seconds to wait before restarting a daemon that died.
        #[arg(long, default_value_t = 1.0)]
        restart_delay: f64,
        /// Join an existing Berth as one more web worker: start only sandboxd and the
        /// agent, registered with the controller at this gRPC URL
        /// (e.g. http://10.0.0.1:7701). --port-base then only places this worker's ports.
        #[arg(long, value_name = "CONTROLLER_GRPC_URL")]
        join: Option<String>,
        /// With --join: the file server's URL (default: the controller's host, port
        /// 7702 relative to its gRPC port 7701).
        #[arg(long, requires = "join", value_name = "URL")]
        fsd: Option<String>,
        /// PEM file of CA certificates trusted for HTTPS registries (given to the
        /// controller and the agent as --registry-ca).
        #[arg(long, value_name = "FILE")]
        registry_ca: Option<PathBuf>,
        /// Disk the worker's image store may use before unused images are removed
        /// (the agent's --image-budget, e.g. 10GiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_image_budget)]
        image_budget: Option<String>,
    },
    /// Manage sites.
    #[command(subcommand)]
    Sites(SitesCmd),
    /// Set a site's instance count.
    #[command(allow_negative_numbers = true)]
    Scale {
        site: String,
        instances: i64,
        /// Return at once instead of waiting for the instances to be ready.
        #[arg(long)]
        no_wait: bool,
    },
    /// Inspect workers; `berth worker gc` runs on a worker itself.
    #[command(subcommand, alias = "worker")]
    Workers(WorkersCmd),
    /// Save or remove credentials for an image registry.
    #[command(subcommand)]
    Registry(RegistryCmd),
}

#[derive(Subcommand)]
enum RegistryCmd {
    /// Check credentials against a registry and save them for `berth sites create`.
    Login {
        /// Registry host[:port], e.g. registry.example.com or 127.0.0.1:5000
        host: String,
        #[arg(long, short)]
        username: String,
        /// Read the password from standard input (the only way to give it).
        #[arg(long)]
        password_stdin: bool,
        /// Plain HTTP (the default for loopback hosts).
        #[arg(long)]
        insecure: bool,
        /// PEM file of CA certificates trusted for this registry's HTTPS certificate.
        #[arg(long, env = "BERTH_REGISTRY_CA")]
        registry_ca: Option<PathBuf>,
    },
    /// Remove saved credentials for a registry.
    Logout { host: String },
}

#[derive(Subcommand)]
enum SitesCmd {
    /// Create a site from an OCI image and wait until it serves.
    Create {
        name: String,
        /// Image reference, e.g. 127.0.0.1:5000/hello:1
        #[arg(long)]
        image: String,
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        instances: i64,
        /// Port the app listens on (given to it as PORT).
        #[arg(long)]
        port: Option<u32>,
        /// App setting KEY=VALUE (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Registry credentials user:password.
        #[arg(long, env = "BERTH_REGISTRY_AUTH")]
        registry_auth: Option<String>,
        /// Allow plain HTTP to the registry.
        #[arg(long)]
        insecure_registry: bool,
        /// Copy /home to the worker's disk before each instance starts; the app sees
        /// BERTH_LOCALCACHE_READY=1 and its writes to /home stay local and are lost
        /// when the instance stops.
        #[arg(long)]
        local_cache: bool,
        #[arg(long)]
        no_wait: bool,
    },
    /// List sites.
    #[command(alias = "ls")]
    List {
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Show one site and its instances.
    Show {
        name: String,
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Delete a site and stop all its instances.
    #[command(alias = "rm")]
    Delete { name: String },
}

#[derive(Subcommand)]
enum WorkersCmd {
    #[command(alias = "ls")]
    List {
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// On a worker: remove every image no instance uses from its image store (as root).
    Gc {
        /// State directory of `berth up` on this machine.
        #[arg(long, default_value = "/var/lib/berth")]
        state_dir: PathBuf,
        /// The agent's admin socket (default: <state-dir>/agent/admin.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = e
                .downcast_ref::<ClientError>()
                .map(ClientError::exit_code)
                .unwrap_or(1);
            ExitCode::from(code as u8)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let client = || -> Result<ApiClient> {
        let token = client::load_token(cli.token_file.as_deref())?;
        Ok(ApiClient::new(&cli.api, token))
    };
    match cli.cmd {
        Cmd::Up {
            state_dir,
            port_base,
            domain,
            worker_name,
            restart_delay,
            join,
            fsd,
            registry_ca,
            image_budget,
        } => {
            let exe = std::env::current_exe().context("finding the berth binary")?;
            let bin_dir = exe
                .parent()
                .context("the berth binary has no parent directory")?
                .to_path_buf();
            if !(0.0..=3600.0).contains(&restart_delay) {
                bail!("--restart-delay must be between 0 and 3600 seconds");
            }
            up::run(up::UpConfig {
                state_dir,
                port_base,
                domain,
                worker_name,
                restart_delay: Duration::from_secs_f64(restart_delay),
                bin_dir,
                registry_ca: registry_ca
                    .map(|p| {
                        std::fs::canonicalize(&p)
                            .with_context(|| format!("--registry-ca {}", p.display()))
                    })
                    .transpose()?,
                image_budget,
                join: match join {
                    None => None,
                    Some(controller) => Some(up::Join {
                        fsd: match fsd {
                            Some(f) => f,
                            None => up::default_fsd_url(&controller)?,
                        },
                        controller,
                    }),
                },
            })
            .await
        }
        Cmd::Sites(SitesCmd::Create {
            name,
            image,
            instances,
            port,
            env,
            registry_auth,
            insecure_registry,
            local_cache,
            no_wait,
        }) => {
            berth_api::names::validate_site_name(&name)?;
            if instances < 0 {
                bail!("--instances must be 0 or more (got {instances})");
            }
            let env = parse_env(&env)?;
            let registry_auth = match registry_auth {
                Some(a) => Some(a),
                None => saved_registry_auth(&image)?,
            };
            let c = client()?;
            let req = CreateSite {
                name: name.clone(),
                image,
                instances: Some(instances),
                env,
                port,
                insecure_registry: insecure_registry.then_some(true),
                registry_auth,
                local_cache,
            };
            let site = c.create_site(&req).await?;
            println!(
                "Created site {} ({} pinned as {})",
                site.name, site.image, site.image_digest
            );
            if !no_wait && site.instances > 0 {
                wait_ready(&c, &name, site.instances as usize).await?;
            }
            println!("{}", site.url);
            Ok(())
        }
        Cmd::Sites(SitesCmd::List { output }) => {
            let list = client()?.list_sites().await?;
            match output {
                Format::Json => println!("{}", output::json(&list)),
                Format::Table => print!("{}", output::sites_table(&list.sites)),
            }
            if output == Format::Table {
                println!();
            }
            Ok(())
        }
        Cmd::Sites(SitesCmd::Show { name, output }) => {
            let site = client()?.get_site(&name).await?;
            match output {
                Format::Json => println!("{}", output::json(&site)),
                Format::Table => print!("{}", output::site_details(&site)),
            }
            Ok(())
        }
        Cmd::Sites(SitesCmd::Delete { name }) => {
            client()?.delete_site(&name).await?;
            println!("Deleted site {name}; its instances are being stopped");
            Ok(())
        }
        Cmd::Scale {
            site,
            instances,
            no_wait,
        } => {
            if instances < 0 {
                bail!("instance count must be 0 or more (got {instances}); use `berth scale {site} 0` to stop every instance");
            }
            let c = client()?;
            let s = c.scale(&site, instances).await?;
            println!("Scaled {} to {} instance(s)", s.name, s.instances);
            if !no_wait && instances > 0 {
                wait_ready(&c, &site, instances as usize).await?;
            }
            Ok(())
        }
        Cmd::Registry(RegistryCmd::Login {
            host,
            username,
            password_stdin,
            insecure,
            registry_ca,
        }) => {
            registry_login(
                &host,
                &username,
                password_stdin,
                insecure,
                registry_ca.as_deref(),
            )
            .await
        }
        Cmd::Registry(RegistryCmd::Logout { host }) => {
            let (path, had) = credentials::remove(&host)?;
            if had {
                println!("Removed credentials for {host} from {}", path.display());
            } else {
                println!("No saved credentials for {host} in {}", path.display());
            }
            Ok(())
        }
        Cmd::Workers(WorkersCmd::Gc {
            state_dir,
            socket,
            output,
        }) => {
            let socket = socket.unwrap_or_else(|| worker::default_socket(&state_dir));
            let v = worker::request(&socket, "gc").await?;
            match output {
                Format::Json => println!("{}", output::json(&v)),
                Format::Table => println!(
                    "Image garbage collection: {}",
                    v["summary"].as_str().unwrap_or_default()
                ),
            }
            Ok(())
        }
        Cmd::Workers(WorkersCmd::List { output }) => {
            let list = client()?.list_workers().await?;
            match output {
                Format::Json => println!("{}", output::json(&list)),
                Format::Table => println!("{}", output::workers_table(&list.workers)),
            }
            Ok(())
        }
    }
}

/// `user:password` saved for the registry of `image` (`berth registry login`, docker's config).
fn saved_registry_auth(image: &str) -> Result<Option<String>> {
    // A reference that does not parse is the controller's to reject, with its own message.
    let Ok(r) = image.parse::<berth_images::Reference>() else {
        return Ok(None);
    };
    let found = credentials::lookup(r.registry())
        .with_context(|| format!("looking up saved credentials for {}", r.registry()))?;
    Ok(found.map(|(u, p)| format!("{u}:{p}")))
}

async fn registry_login(
    host: &str,
    user: &str,
    password_stdin: bool,
    insecure: bool,
    registry_ca: Option<&std::path::Path>,
) -> Result<()> {
    use std::io::{IsTerminal, Read};
    if !password_stdin && std::io::stdin().is_terminal() {
        bail!("give the password on standard input with --password-stdin, e.g. `cat pw.txt | berth registry login {host} -u {user} --password-stdin`");
    }
    let mut pass = String::new();
    std::io::stdin()
        .read_to_string(&mut pass)
        .context("reading the password from standard input")?;
    let pass = pass.trim_end_matches(['\n', '\r']);
    if pass.is_empty() {
        bail!("no password on standard input");
    }
    let insecure = insecure || registry::is_loopback(host);
    let verified = registry::verify(host, user, pass, insecure, registry_ca).await?;
    let path = credentials::store(host, user, pass)?;
    if verified == registry::Verified::NotChecked {
        eprintln!("note: {host} serves /v2/ without credentials, so they could not be checked");
    }
    println!(
        "Login succeeded: credentials for {host} saved in {}",
        path.display()
    );
    Ok(())
}

fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--env {p:?} is not KEY=VALUE");
        };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("--env key {k:?} is invalid: use letters, digits and '_'");
        }
        env.insert(k.to_string(), v.to_string());
    }
    Ok(env)
}

/// Waits until `want` instances are ready, showing progress (bars on a terminal, a
/// plain line per change otherwise; see [`berth_cli::progress`]).
async fn wait_ready(c: &ApiClient, name: &str, want: usize) -> Result<()> {
    let mut progress = berth_cli::progress::DeployProgress::new();
    let r = wait_ready_with(c, name, want, &mut progress).await;
    progress.finish();
    r
}

async fn wait_ready_with(
    c: &ApiClient,
    name: &str,
    want: usize,
    progress: &mut berth_cli::progress::DeployProgress,
) -> Result<()> {
    let start = Instant::now();
    let timeout = Duration::from_secs(180);
    loop {
        let site: Site = c.get_site(name).await?;
        let ready = site
            .instance_states
            .iter()
            .filter(|i| i.state == "ready")
            .count();
        progress.update(&site);
        if let Some(f) = site.instance_states.iter().find(|i| i.state == "failed") {
            bail!(
                "instance {} of {name} failed: {}. See `berth sites show {name}`",
                f.id,
                f.message
            );
        }
        if ready >= want {
            progress.finish();
            eprintln!(
                "  {ready}/{want} instance(s) ready in {:.1}s",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("{ready}/{want} instances of {name} ready after {}s; see `berth sites show {name}` and the agent log", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `--image-budget`: checked here, passed on to the agent as written.
fn parse_image_budget(s: &str) -> Result<String, String> {
    berth_api::size::parse_size(s).map(|_| s.trim().to_string())
}
