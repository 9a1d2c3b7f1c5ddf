//! Laying out a local cluster: a throwaway CA, signing key and trust bundle,
//! free loopback ports, and one config file per node.

use crate::config::{NodeConfig, Role};
use crate::crypto::{KeyRing, Signer};
use crate::transport::ClusterCa;
use rand::RngCore;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

/// Why a cluster could not be laid out.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("finding a free port")]
    Port(#[source] std::io::Error),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error(transparent)]
    Key(#[from] crate::crypto::KeyError),
    #[error("{what} must be at most {max} on one machine (asked for {asked})")]
    TooMany {
        what: &'static str,
        asked: usize,
        max: usize,
    },
}

/// The most relays and edges `dcdn up` lays out: each node is a process
/// with its own ports, and every edge's config lists every other edge, so
/// the files grow with the square of the count (`--edges 100000` wrote
/// 562 MB in 10 s before this bound).
pub const MAX_RELAYS: usize = 16;
pub const MAX_EDGES: usize = 64;

/// One node of the plan.
#[derive(Debug, Clone)]
pub struct PlannedNode {
    pub name: String,
    pub role: Role,
    pub config_path: PathBuf,
    pub mesh: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

/// A laid-out cluster.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dir: PathBuf,
    pub nodes: Vec<PlannedNode>,
    pub ingest_token: String,
    pub admin_token: String,
    /// With TLS: the CA that signed the nodes' HTTPS certificates.
    pub https_ca: Option<PathBuf>,
}

impl Plan {
    /// The base URL clients and publishers use for `n` (its HTTP listener).
    pub fn client_url(&self, n: &PlannedNode) -> String {
        let scheme = if self.https_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", n.http)
    }

    pub fn origin(&self) -> Option<&PlannedNode> {
        self.nodes.iter().find(|n| n.role == Role::Origin)
    }

    pub fn edges(&self) -> impl Iterator<Item = &PlannedNode> {
        self.nodes.iter().filter(|n| n.role == Role::Edge)
    }
}

fn write(path: &Path, text: &str) -> Result<(), PlanError> {
    std::fs::write(path, text).map_err(|source| PlanError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Secret files are written owner-only.
fn write_secret(path: &Path, text: &str) -> Result<(), PlanError> {
    write(path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| PlanError::Write {
                path: path.display().to_string(),
                source,
            },
        )?;
    }
    Ok(())
}

/// Ports are picked below Linux's ephemeral range (32768–60999): a port
/// from there, released and bound again later, can meanwhile become the
/// local port of any outgoing connection on the machine, and then the node
/// fails to start with "address in use".
const PICK_FROM: u16 = 20_000;
const PICK_TO: u16 = 32_000;

fn pick_port(
    bind: impl Fn(SocketAddr) -> std::io::Result<SocketAddr>,
) -> Result<SocketAddr, PlanError> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..256 {
        let port = rng.gen_range(PICK_FROM..PICK_TO);
        if let Ok(addr) = bind(SocketAddr::from(([127, 0, 0, 1], port))) {
            return Ok(addr);
        }
    }
    bind(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(PlanError::Port)
}

fn free_tcp() -> Result<SocketAddr, PlanError> {
    pick_port(|a| TcpListener::bind(a).and_then(|l| l.local_addr()))
}

fn free_udp() -> Result<SocketAddr, PlanError> {
    pick_port(|a| UdpSocket::bind(a).and_then(|s| s.local_addr()))
}

/// A port free over TCP and UDP both: HTTPS and HTTP/3 share its number.
fn free_tcp_and_udp() -> Result<SocketAddr, PlanError> {
    pick_port(|a| {
        let tcp = TcpListener::bind(a)?;
        let addr = tcp.local_addr()?;
        UdpSocket::bind(addr)?;
        Ok(addr)
    })
}

fn random_token() -> String {
    let mut b = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Counts of each tier.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub relays: usize,
    pub edges: usize,
}

/// Writes credentials and configs for 1 origin, `relays` relays and `edges`
/// edges under `dir`. `tweak` may adjust each node's config.
pub fn plan(
    dir: &Path,
    counts: Counts,
    tweak: impl Fn(&mut NodeConfig),
) -> Result<Plan, PlanError> {
    plan_with(dir, counts, false, tweak)
}

/// [`plan`], and with `tls` the origin's ingest and the edges' client
/// listeners serve HTTPS and HTTP/3 with a certificate for `localhost` and
/// 127.0.0.1 from a throwaway CA (`https-ca.pem`), in `https/`.
pub fn plan_with(
    dir: &Path,
    counts: Counts,
    tls: bool,
    tweak: impl Fn(&mut NodeConfig),
) -> Result<Plan, PlanError> {
    for (what, asked, max) in [
        ("relays", counts.relays, MAX_RELAYS),
        ("edges", counts.edges, MAX_EDGES),
    ] {
        if asked > max {
            return Err(PlanError::TooMany { what, asked, max });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| PlanError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let ca = ClusterCa::generate("local")?;
    write(&dir.join("ca.pem"), ca.cert_pem())?;
    write_secret(&dir.join("ca.key"), ca.key_pem())?;
    let signer = Signer::generate(&mut rand::rngs::OsRng);
    let signing_key = dir.join("signing.key");
    signer.save(&signing_key)?;
    let mut ring = KeyRing::new();
    let id = ring.add_trusted(signer.public_key())?;
    ring.activate(id)?;
    let bundle = dir.join("trust-bundle.json");
    write(&bundle, &ring.to_bundle().to_json())?;
    let ingest_token = random_token();
    let admin_token = random_token();
    write_secret(&dir.join("ingest-token"), &ingest_token)?;
    write_secret(&dir.join("admin-token"), &admin_token)?;
    // A CA of its own, not the mesh's: what clients trust must not also
    // vouch for cluster members.
    let https = if tls {
        let https_ca = ClusterCa::generate("local-https")?;
        let ca_file = dir.join("https-ca.pem");
        write(&ca_file, https_ca.cert_pem())?;
        let cert_dir = dir.join("https");
        std::fs::create_dir_all(&cert_dir).map_err(|source| PlanError::Write {
            path: cert_dir.display().to_string(),
            source,
        })?;
        let server =
            https_ca.issue_server(&["localhost"], &[std::net::IpAddr::from([127, 0, 0, 1])])?;
        write(
            &cert_dir.join(crate::roles::certs::CERT_FILE),
            &server.cert_pem,
        )?;
        write_secret(
            &cert_dir.join(crate::roles::certs::KEY_FILE),
            &server.key_pem,
        )?;
        Some((ca_file, cert_dir))
    } else {
        None
    };
    // The nodes only check tokens, so their configs name digests; the
    // plain tokens above are for the user's clients.
    for (file, token) in [
        ("ingest-token.sha256", &ingest_token),
        ("admin-token.sha256", &admin_token),
    ] {
        let t = crate::auth::Token::from_secret(token).map_err(|e| PlanError::Write {
            path: file.to_owned(),
            source: std::io::Error::other(e),
        })?;
        write_secret(&dir.join(file), &t.hashed())?;
    }

    let mut nodes = Vec::new();
    let roles = std::iter::once((Role::Origin, "origin-0".to_owned()))
        .chain((0..counts.relays).map(|i| (Role::Relay, format!("relay-{i}"))))
        .chain((0..counts.edges).map(|i| (Role::Edge, format!("edge-{i}"))));
    // Each picked port is released at once, so a later pick could return it
    // again: never hand out one port twice in a plan.
    let mut taken = std::collections::HashSet::new();
    let free_http = if tls { free_tcp_and_udp } else { free_tcp };
    let mut unique = |pick: fn() -> Result<SocketAddr, PlanError>| {
        for _ in 0..64 {
            let addr = pick()?;
            if taken.insert(addr.port()) {
                return Ok(addr);
            }
        }
        Err(PlanError::Port(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no unused port after 64 picks",
        )))
    };
    for (role, name) in roles {
        nodes.push(PlannedNode {
            config_path: dir.join(format!("{name}.toml")),
            name,
            role,
            mesh: unique(free_udp)?,
            http: unique(free_http)?,
            admin: unique(free_tcp)?,
        });
    }
    let mesh_of = |r: Role| -> Vec<String> {
        nodes
            .iter()
            .filter(|n| n.role == r)
            .map(|n| n.mesh.to_string())
            .collect()
    };
    let (origins, relays, edges) = (
        mesh_of(Role::Origin),
        mesh_of(Role::Relay),
        mesh_of(Role::Edge),
    );
    for n in &nodes {
        let identity = ca.issue_node(&n.name, n.role)?;
        let cert = dir.join(format!("{}.pem", n.name));
        let key = dir.join(format!("{}.key", n.name));
        write(&cert, &identity.cert_pem)?;
        write_secret(&key, &identity.key_pem)?;
        let mut c = NodeConfig::default();
        c.node.role = n.role;
        c.node.name = n.name.clone();
        c.network.mesh_listen = n.mesh;
        c.network.http_listen = n.http;
        c.network.admin_listen = n.admin;
        c.discovery.upstream = match n.role {
            Role::Origin => vec![],
            Role::Relay => origins.clone(),
            Role::Edge if relays.is_empty() => origins.clone(),
            Role::Edge => relays.clone(),
        };
        if n.role == Role::Edge {
            c.discovery.peers = edges
                .iter()
                .filter(|e| **e != n.mesh.to_string())
                .cloned()
                .collect();
        }
        c.discovery.resolve_interval_seconds =
            crate::config::Bounded::new(1).unwrap_or(c.discovery.resolve_interval_seconds);
        c.tls.ca_cert = dir.join("ca.pem");
        c.tls.node_cert = cert;
        c.tls.node_key = key;
        c.crypto.trust_bundle = bundle.clone();
        if n.role == Role::Origin {
            c.crypto.signing_keys = vec![signing_key.clone()];
            c.origin.ingest_token_file = Some(dir.join("ingest-token.sha256"));
            // The origin of record keeps what it acknowledged across restarts.
            c.origin.store_dir = Some(dir.join(format!("{}-store", n.name)));
        }
        c.admin.token_file = Some(dir.join("admin-token.sha256"));
        if let (Some((_, cert_dir)), Role::Origin | Role::Edge) = (&https, n.role) {
            c.http_tls = Some(crate::config::HttpTlsSection {
                cert_dirs: vec![cert_dir.clone()],
                http3: true,
                reload_interval_seconds: crate::config::Bounded::new(1)
                    .unwrap_or(crate::config::HttpTlsSection::default().reload_interval_seconds),
            });
        }
        c.storage.ring_buffer_size_mb =
            crate::config::Bounded::new(256).unwrap_or(c.storage.ring_buffer_size_mb);
        tweak(&mut c);
        write(&n.config_path, &c.to_toml())?;
    }
    Ok(Plan {
        dir: dir.to_owned(),
        nodes,
        ingest_token,
        admin_token,
        https_ca: https.map(|(ca, _)| ca),
    })
}
