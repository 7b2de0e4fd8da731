//! What `--listen` asks for: `[NAME=]SPEC` parsed into a name and an
//! [`Address`], and the rule that names are unique.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use super::ListenError;

/// Where a listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// One TCP address.
    Tcp(SocketAddr),
    /// `:PORT`: every interface, IPv6 and IPv4 on one dual-stack socket.
    AllInterfaces(u16),
    /// A unix stream socket at this path.
    Unix(PathBuf),
    /// `udp://HOST:PORT`: one UDP socket (systemd's `ListenDatagram=`).
    Udp(SocketAddr),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::AllInterfaces(port) => write!(f, ":{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Udp(addr) => write!(f, "udp://{addr}"),
        }
    }
}

impl FromStr for Address {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("the unix socket path is empty".into());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(hostport) = spec.strip_prefix("udp://") {
            return match parse_host_port(hostport)? {
                Some(addr) => Ok(Address::Udp(addr)),
                None => Err("udp:// needs a HOST:PORT (e.g. udp://127.0.0.1:5353)".into()),
            };
        }
        let hostport = spec.strip_prefix("tcp://").unwrap_or(spec);
        if let Some(port) = hostport.strip_prefix(':') {
            return parse_port(port).map(Address::AllInterfaces);
        }
        parse_host_port(hostport)?
            .map(Address::Tcp)
            .ok_or_else(|| "no port".into())
    }
}

/// `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`; `None` without a port.
fn parse_host_port(hostport: &str) -> Result<Option<SocketAddr>, String> {
    if let Ok(addr) = hostport.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    let Some((host, port)) = hostport.rsplit_once(':') else {
        return Ok(None);
    };
    let port = parse_port(port)?;
    match host {
        "localhost" => Ok(Some(SocketAddr::from(([127, 0, 0, 1], port)))),
        _ => Err(format!(
            "'{host}' is not an IP address (use 127.0.0.1, [::1], 0.0.0.0 or :PORT)"
        )),
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    port.parse()
        .map_err(|_| format!("'{port}' is not a port number (0-65535)"))
}

/// A listener as asked for: a name (for `LISTEN_FDNAMES`) and an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    /// The name workers see in `LISTEN_FDNAMES`.
    pub name: String,
    /// Where to listen.
    pub address: Address,
}

impl ListenerSpec {
    /// Parse `[NAME=]SPEC`; `index` gives the default name `listenN`.
    pub fn parse(spec: &str, index: usize) -> Result<Self, ListenError> {
        let invalid = |reason: String| ListenError::InvalidSpec {
            spec: spec.to_string(),
            reason,
        };
        let (name, address) = match spec.split_once('=') {
            // A path may contain '=', a name never contains ':' or '/'.
            Some((name, rest)) if is_name(name) => (name.to_string(), rest),
            Some((name, _)) if !name.contains([':', '/']) => {
                return Err(invalid(format!(
                    "the name '{name}' may hold only letters, digits, '.', '_' and '-'"
                )));
            }
            _ => (format!("listen{index}"), spec),
        };
        let address = address.parse().map_err(invalid)?;
        Ok(ListenerSpec { name, address })
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Check that no two specs share a name.
pub fn check_names(specs: &[ListenerSpec]) -> Result<(), ListenError> {
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(ListenError::DuplicateName(spec.name.clone()));
        }
    }
    Ok(())
}
