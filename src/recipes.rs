//! Servers run by baton as a user would run them: the recipes of
//! `examples/` and the unchanged servers of `docs/any-server.md`. Each is
//! a [`Server`] (how baton gets the socket to it, how baton learns it is
//! ready, the command), reloaded under load by [`reloads_under_load`].
//! `tests/any_server/recipes.rs` asserts on them; `cargo run --release
//! --example any-server-table` prints the table of docs/any-server.md.
//!
//! The runtimes come from Debian packages that `.ci/run` installs
//! (golang-go, nodejs, nginx, gunicorn, python3-uvicorn,
//! libserver-starter-perl).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use baton_loadgen::{Mode, Report};
use nix::sys::signal::Signal;

use crate::{Baton, Traffic, baton_bin, field, free_port};

/// One server under baton.
pub struct Server {
    /// What it is, as the table shows it.
    pub name: &'static str,
    /// How baton gets the socket to it (`LISTEN_FDS`, `--preload`, `NGINX`…).
    pub socket: &'static str,
    /// baton's flags besides `--listen` (`--ready auto`, `--stop-signal QUIT`…).
    pub flags: Vec<String>,
    /// What `--listen` binds: `http=127.0.0.1:0`, or a fixed port for a
    /// server whose own config names it.
    pub listen: String,
    /// The command baton runs.
    pub command: Vec<String>,
    /// The command as a user types it, for the table.
    pub shown: &'static str,
    /// Needs baton's `--preload`.
    pub preload: bool,
    /// What must live as long as the server (a config's directory).
    pub _keep: Option<tempfile::TempDir>,
}

impl Server {
    fn new(name: &'static str, socket: &'static str, flags: &[&str], command: Vec<String>) -> Self {
        Server {
            name,
            socket,
            flags: flags.iter().map(|s| s.to_string()).collect(),
            listen: "http=127.0.0.1:0".into(),
            command,
            shown: "",
            preload: false,
            _keep: None,
        }
    }

    fn shown(mut self, shown: &'static str) -> Self {
        self.shown = shown;
        self
    }

    /// The readiness it runs with: the value of `--ready`.
    pub fn ready(&self) -> &str {
        self.flags
            .iter()
            .position(|f| f == "--ready")
            .and_then(|i| self.flags.get(i + 1))
            .map_or("delay=1s", String::as_str)
    }

    /// The `baton run` command line a user types, as the table shows it.
    pub fn command_line(&self) -> String {
        let mut flags = self.flags.clone();
        if self.preload {
            flags.insert(0, "--preload".into());
        }
        format!(
            "baton run --listen 127.0.0.1:8080 {} -- {}",
            flags.join(" "),
            self.shown
        )
    }

    /// Start baton with it.
    pub fn start(&self) -> Baton {
        let mut args: Vec<String> = vec!["run".into(), "--listen".into(), self.listen.clone()];
        if self.preload {
            args.push("--preload".into());
        }
        args.extend(self.flags.iter().cloned());
        args.push("--".into());
        args.extend(self.command.iter().cloned());
        Baton::start(&args)
    }
}

/// The Go server of `examples/go-lameduck`: keep-alives off, a grace
/// period, then `Shutdown`.
pub fn go_lameduck() -> Server {
    let bin = go_build(&repo_file("examples/go-lameduck/main.go"), "go-lameduck");
    Server::new(
        "Go net/http, lame duck (examples/go-lameduck)",
        "LISTEN_FDS",
        &["--ready", "auto"],
        vec![bin.display().to_string()],
    )
    .shown("./app")
}

/// A plain Go server on LISTEN_FDS whose drain is `Shutdown` alone.
pub fn go_plain() -> Server {
    let bin = go_build(
        &repo_file("tests/any_server/fixtures/listen_fds.go"),
        "listen-fds-go",
    );
    Server::new(
        "Go net/http, Shutdown() alone",
        "LISTEN_FDS",
        &["--ready", "auto"],
        vec![bin.display().to_string()],
    )
    .shown("./app")
}

/// `examples/node-lameduck.js`: `Connection: close` for a grace period,
/// then the idle connections closed.
pub fn node_lameduck() -> Server {
    Server::new(
        "node, lame duck (examples/node-lameduck.js)",
        "LISTEN_FDS (listen({fd: 3}))",
        &["--ready", "auto"],
        vec![
            require("node").display().to_string(),
            repo_file("examples/node-lameduck.js").display().to_string(),
        ],
    )
    .shown("node examples/node-lameduck.js")
}

/// gunicorn with `examples/gunicorn.conf.py` (2 sync workers).
pub fn gunicorn() -> Server {
    Server::new(
        "gunicorn 2 sync workers (examples/gunicorn.conf.py)",
        "LISTEN_FDS (gunicorn's own)",
        &["--ready", "auto", "--drain-timeout", "40s"],
        vec![
            python().into(),
            require("gunicorn").display().to_string(),
            "-c".into(),
            repo_file("examples/gunicorn.conf.py").display().to_string(),
            "--chdir".into(),
            repo_file("examples").display().to_string(),
            "wsgi_hello:app".into(),
        ],
    )
    .shown("gunicorn -c examples/gunicorn.conf.py app:app")
}

/// `uvicorn --fd 3`, as uvicorn's documentation says.
pub fn uvicorn_fd() -> Server {
    Server::new(
        "uvicorn --fd 3",
        "fd 3",
        &["--ready", "auto"],
        vec![
            python().into(),
            "-m".into(),
            "uvicorn".into(),
            "--fd".into(),
            "3".into(),
            "--app-dir".into(),
            repo_file("examples").display().to_string(),
            "uvicorn_lameduck:hello".into(),
        ],
    )
    .shown("uvicorn --fd 3 app:app")
}

/// `examples/uvicorn_lameduck.py`: fd 3 as TCP, `Connection: close` for a
/// grace period.
pub fn uvicorn_lameduck() -> Server {
    Server::new(
        "uvicorn, lame duck (examples/uvicorn_lameduck.py)",
        "LISTEN_FDS",
        &["--ready", "auto"],
        vec![
            python().into(),
            repo_file("examples/uvicorn_lameduck.py")
                .display()
                .to_string(),
        ],
    )
    .shown("python3 examples/uvicorn_lameduck.py app:app")
}

/// `examples/rust-lameduck.rs`, on the `baton-worker` crate.
pub fn rust_baton_worker() -> Server {
    let bin = crate::build::build_example("rust-lameduck");
    Server::new(
        "Rust, baton-worker (examples/rust-lameduck.rs)",
        "LISTEN_FDS",
        &["--ready", "notify"],
        vec![bin.display().to_string()],
    )
    .shown("target/release/examples/rust-lameduck")
}

/// The `listenfd-server` crate: hyper on a socket from the `listenfd` crate.
pub fn rust_listenfd() -> Server {
    Server::new(
        "Rust, listenfd crate + hyper",
        "LISTEN_FDS",
        &["--ready", "auto"],
        vec![
            crate::workspace_bin("listenfd-server")
                .display()
                .to_string(),
        ],
    )
    .shown("./listenfd-server")
}

/// A Perl worker written for Server::Starter.
pub fn server_starter() -> Server {
    Server::new(
        "Server::Starter worker (Perl)",
        "SERVER_STARTER_PORT",
        &["--ready", "auto"],
        vec![
            require("perl").display().to_string(),
            repo_file("tests/any_server/fixtures/starter_worker.pl")
                .display()
                .to_string(),
        ],
    )
    .shown("perl worker.pl")
}

/// nginx, master and one worker, adopting the socket named in `NGINX`.
pub fn nginx() -> Server {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir.path(), port)).expect("write nginx.conf");
    let mut server = Server::new(
        "nginx (master + 1 worker)",
        "NGINX",
        &["--ready", "auto", "--stop-signal", "QUIT"],
        vec![
            require_sbin("nginx").display().to_string(),
            "-e".into(),
            "stderr".into(),
            "-p".into(),
            dir.path().display().to_string(),
            "-c".into(),
            conf.display().to_string(),
        ],
    )
    .shown("nginx -c nginx.conf  # daemon off; listen 127.0.0.1:8080;");
    server.listen = format!("http=127.0.0.1:{port}");
    server._keep = Some(dir);
    server
}

/// A Python worker written for einhorn, with a fixed delay for readiness.
pub fn einhorn() -> Server {
    Server::new(
        "einhorn worker (Python)",
        "EINHORN_FD_*",
        &["--ready", "delay=500ms"],
        vec![
            python().into(),
            repo_file("tests/any_server/fixtures/einhorn_worker.py")
                .display()
                .to_string(),
        ],
    )
    .shown("python3 worker.py")
}

/// node, unchanged: it calls `listen(PORT)` itself (`--preload`).
pub fn node_unchanged() -> Server {
    let port = free_port();
    let script = format!(
        "require('http').createServer((q, s) => {{ s.setHeader('X-Pid', process.pid); s.end('ok\\n'); }}).listen({port}, '127.0.0.1')"
    );
    // A keep-alive client never lets go of its connection to the old
    // generation, which cannot drain it: baton waits half the drain
    // timeout for it, then stops the server. 6 s keeps ten reloads within
    // the load client's bound.
    let mut server = Server::new(
        "node, unchanged (listen(PORT))",
        "--preload",
        &["--ready", "auto", "--drain-timeout", "6s"],
        vec![require("node").display().to_string(), "-e".into(), script],
    )
    .shown("node server.js  # listen(8080)");
    server.listen = format!("http=127.0.0.1:{port}");
    server.preload = true;
    server
}

/// `python3 -m http.server PORT`, unchanged (`--preload`).
pub fn python_http_server() -> Server {
    let port = free_port();
    let mut server = Server::new(
        "python3 -m http.server",
        "--preload",
        &["--ready", "auto", "--drain-timeout", "6s"],
        vec![
            python().into(),
            "-m".into(),
            "http.server".into(),
            "--bind".into(),
            "127.0.0.1".into(),
            port.to_string(),
        ],
    )
    .shown("python3 -m http.server --bind 127.0.0.1 8080");
    server.listen = format!("http=127.0.0.1:{port}");
    server.preload = true;
    server
}

/// What one reload run measured.
pub struct Run {
    pub reloads: u64,
    pub report: Report,
    /// Spawn to ready (baton's `ready_ms`), of every generation.
    pub ready_ms: Vec<u64>,
    /// What baton printed.
    pub output: String,
}

impl Run {
    /// Failed requests per reload.
    pub fn failed_per_reload(&self) -> f64 {
        self.report.failed_total() as f64 / self.reloads as f64
    }
}

/// Start `server` under baton, put `clients` clients of `mode` on it, and
/// reload `reloads` times: each time until the new generation is ready,
/// the old one has exited (so that no drain is cut short by the next
/// reload) and the load got 30 more answers. Stops baton (which must exit
/// 0); asserts nothing about the load.
pub fn reloads_under_load(server: &Server, mode: Mode, clients: usize, reloads: u64) -> Run {
    let baton = server.start();
    let addr = baton.address("http");
    reloads_with_traffic(baton, addr, mode, clients, reloads)
}

/// [`reloads_under_load`] of a baton already started, with the load on
/// `addr` (where the server is reached, when that is not baton's `http`
/// address as it prints it).
pub fn reloads_with_traffic(
    mut baton: Baton,
    addr: SocketAddr,
    mode: Mode,
    clients: usize,
    reloads: u64,
) -> Run {
    baton.wait_ready(1);
    let traffic = Traffic::start(addr, mode, clients);
    for generation in 2..=reloads + 1 {
        traffic.serve(30);
        baton.signal(Signal::SIGHUP);
        baton.wait_ready(generation);
        baton.wait_for(&["exited", &format!(" generation={} ", generation - 1)]);
    }
    traffic.serve(30);
    let report = traffic.finish();
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    let ready_ms = (1..=reloads + 1)
        .map(|g| {
            let line = baton.wait_for(&[&format!(" ready generation={g} ")]);
            field(&line, "ready_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no ready_ms in {line:?}"))
        })
        .collect();
    Run {
        reloads,
        report,
        ready_ms,
        output: baton.output(),
    }
}

/// A file of this repository.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A program in PATH, or a panic that says where it comes from.
pub fn require(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed: .ci/run installs it"))
}

/// A program of /usr/sbin, which a test's PATH may lack.
pub fn require_sbin(program: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(program);
    if sbin.is_file() {
        sbin
    } else {
        require(program)
    }
}

/// Debian's python3 (gunicorn's and uvicorn's), whatever else `python3`
/// in PATH is.
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// `go build` of one Go file into the target dir, once per process (Go's
/// build cache lives there too, so later runs are quick).
pub fn go_build(source: &Path, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(bin) = built.get(name) {
        return bin.clone();
    }
    let dir = baton_bin()
        .parent()
        .expect("a directory")
        .join("any-server");
    std::fs::create_dir_all(&dir).expect("create the Go build dir");
    let out = dir.join(name);
    let status = Command::new(require("go"))
        .arg("build")
        .arg("-o")
        .arg(&out)
        .arg(source)
        .env("GOCACHE", dir.join("go-cache"))
        .env("GOPATH", dir.join("go-path"))
        .env("GO111MODULE", "off")
        .status()
        .expect("run go build");
    assert!(status.success(), "go build {} failed", source.display());
    built.insert(name.to_owned(), out.clone());
    out
}

/// nginx's config: `daemon off`, a master and one worker, `listen
/// 127.0.0.1:PORT`, every path in `dir`, `X-Pid` on every response.
pub fn nginx_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log stderr notice;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{ add_header X-Pid $pid always; return 200 \"ok\\n\"; }}\n\
           }}\n\
         }}\n"
    )
}
