//! Test fixture: a real Redis (and a real 3-master Redis Cluster) for every test.
//!
//! Where Redis comes from, in order:
//! 1. Docker reachable: a testcontainers container of the local image `tollgate-redis:7`
//!    (build it with `scripts/redis-image.sh`; override with `TOLLGATE_REDIS_IMAGE=name:tag`).
//! 2. Otherwise `REDIS_URL`, if set (tests that stop or pause Redis use 3 instead).
//! 3. Otherwise a `redis-server` found on `PATH`, on a free 127.0.0.1 port, killed on drop.
//!
//! With none of these, the tests fail and say what to install. `TOLLGATE_REDIS_BACKEND=process`
//! (or `container`) forces a backend.
//!
//! The cluster is three masters (no replicas), containers on the host network or `redis-server`
//! processes, each bound to 127.0.0.1 on a free port (its bus port, +10000, free too), joined by
//! hand (slots split evenly, `CLUSTER MEET`), exactly as `scripts/redis-cluster.sh` does.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

const INSTALL_HINT: &str = "no Redis for the tests: start Docker and run scripts/redis-image.sh \
     (builds the local image tollgate-redis:7), or set REDIS_URL, or install redis-server \
     (apt-get install redis-server)";

fn image() -> (String, String) {
    let image = std::env::var("TOLLGATE_REDIS_IMAGE").unwrap_or_else(|_| "tollgate-redis:7".into());
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
        _ => (image, "latest".to_owned()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Container,
    Url,
    Process,
}

fn docker_reachable() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn redis_server_on_path() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn backend(controllable: bool) -> Backend {
    match std::env::var("TOLLGATE_REDIS_BACKEND").as_deref() {
        Ok("container") => return Backend::Container,
        Ok("process") => return Backend::Process,
        _ => {}
    }
    if docker_reachable() {
        let (name, tag) = image();
        let present = Command::new("docker")
            .args(["image", "inspect", &format!("{name}:{tag}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            present,
            "Docker is reachable but the image {name}:{tag} is missing: run scripts/redis-image.sh \
             (or set TOLLGATE_REDIS_IMAGE, or TOLLGATE_REDIS_BACKEND=process to use redis-server)"
        );
        return Backend::Container;
    }
    if !controllable && std::env::var("REDIS_URL").is_ok() {
        return Backend::Url;
    }
    assert!(redis_server_on_path(), "{INSTALL_HINT}");
    Backend::Process
}

/// `redis-server` arguments for a node on 127.0.0.1:`port`, without persistence.
fn server_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A port that is free now (and, with `bus`, whose +10000 bus port is free too).
pub fn free_port(bus: bool) -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        if !bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair on 127.0.0.1");
}

/// A 127.0.0.1 port where nothing answers, held for as long as this value lives: the socket is
/// bound but never listens, so every connection is refused, and no other test (a parallel
/// test's redis-server on a `free_port`) can take the port meanwhile.
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl DeadPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind 127.0.0.1:0");
        let port = socket.local_addr().unwrap().port();
        Self {
            _socket: socket,
            port,
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A redis-server child process, killed on drop.
struct Process {
    child: Option<Child>,
}

impl Process {
    fn spawn(port: u16, extra: &[String]) -> Self {
        let dir = std::env::temp_dir().join(format!("tollgate-redis-test-{port}"));
        let _ = std::fs::create_dir_all(&dir);
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start redis-server: {e}; {INSTALL_HINT}"));
        Self { child: Some(child) }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Continue a SIGSTOPped server first, so it exits like any other.
        self.signal("-CONT");
        self.kill();
    }
}

enum Kind {
    Container(Box<ContainerAsync<GenericImage>>),
    Process(Mutex<Process>),
    External,
}

/// One Redis server for one test.
pub struct TestRedis {
    kind: Kind,
    url: String,
    port: u16,
    extra: Vec<String>,
}

impl TestRedis {
    /// Any Redis: container, `REDIS_URL`, or process.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A Redis this test may stop, restart, pause and resume (container or process).
    pub async fn start_controllable() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(controllable: bool) -> Self {
        match backend(controllable) {
            Backend::Container => {
                let (name, tag) = image();
                // Host networking, bound to 127.0.0.1 on a port of our choosing: nothing is
                // exposed beyond loopback, and a restarted container is found at the same
                // address (a `-p` mapping would pick a new host port on restart).
                let port = free_port(false);
                let container = GenericImage::new(name, tag)
                    .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
                    .with_network("host")
                    .with_cmd(server_args(port))
                    .with_startup_timeout(Duration::from_secs(30))
                    .start()
                    .await
                    .expect("start the Redis container (is scripts/redis-image.sh built?)");
                let redis = Self {
                    kind: Kind::Container(Box::new(container)),
                    url: format!("redis://127.0.0.1:{port}"),
                    port,
                    extra: Vec::new(),
                };
                redis.wait_ready().await;
                redis
            }
            Backend::Url => {
                let url = std::env::var("REDIS_URL").unwrap();
                Self {
                    kind: Kind::External,
                    url,
                    port: 0,
                    extra: Vec::new(),
                }
            }
            Backend::Process => {
                let port = free_port(false);
                let redis = Self {
                    kind: Kind::Process(Mutex::new(Process::spawn(port, &[]))),
                    url: format!("redis://127.0.0.1:{port}"),
                    port,
                    extra: Vec::new(),
                };
                redis.wait_ready().await;
                redis
            }
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is a container (for messages).
    pub fn is_container(&self) -> bool {
        matches!(self.kind, Kind::Container(_))
    }

    /// A fresh client connection, for inspecting the keyspace.
    pub async fn admin(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test Redis")
    }

    /// Waits until Redis answers PING (at most 10 s).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ping(&self.url).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Redis at {} did not come up",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops Redis (connections are refused until [`restart`](Self::restart)).
    pub async fn stop(&self) {
        match &self.kind {
            Kind::Container(c) => c.stop_with_timeout(Some(0)).await.expect("stop container"),
            Kind::Process(p) => p.lock().unwrap().kill(),
            Kind::External => panic!("cannot stop an external Redis"),
        }
    }

    /// Starts Redis again at the same address (empty) and waits until it answers.
    pub async fn restart(&self) {
        match &self.kind {
            Kind::Container(c) => c.start().await.expect("restart container"),
            Kind::Process(p) => *p.lock().unwrap() = Process::spawn(self.port, &self.extra),
            Kind::External => panic!("cannot restart an external Redis"),
        }
        self.wait_ready().await;
    }

    /// Freezes Redis: connections stay open, nothing is answered.
    pub async fn pause(&self) {
        match &self.kind {
            Kind::Container(c) => c.pause().await.expect("pause container"),
            Kind::Process(p) => p.lock().unwrap().signal("-STOP"),
            Kind::External => panic!("cannot pause an external Redis"),
        }
    }

    /// Unfreezes Redis.
    pub async fn resume(&self) {
        match &self.kind {
            Kind::Container(c) => c.unpause().await.expect("unpause container"),
            Kind::Process(p) => p.lock().unwrap().signal("-CONT"),
            Kind::External => panic!("cannot resume an external Redis"),
        }
    }
}

pub async fn ping(url: &str) -> bool {
    let attempt = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(ref pong)) if pong == "PONG"
    )
}

/// A Redis Cluster on 127.0.0.1 (3 masters unless told otherwise).
pub struct TestCluster {
    _containers: Vec<ContainerAsync<GenericImage>>,
    _processes: Vec<Process>,
    pub ports: Vec<u16>,
}

impl TestCluster {
    pub async fn start() -> Self {
        Self::with_masters(3).await
    }

    /// A Redis Cluster of `masters` masters (no replicas), the slots split evenly.
    pub async fn with_masters(masters: usize) -> Self {
        let backend = backend(true);
        let ports: Vec<u16> = {
            let mut ports = Vec::new();
            while ports.len() < masters {
                let p = free_port(true);
                if !ports.contains(&p) {
                    ports.push(p);
                }
            }
            ports
        };
        let args = |port: u16| -> Vec<String> {
            let mut args = server_args(port);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    "2000",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            args
        };
        let mut containers = Vec::new();
        let mut processes = Vec::new();
        for &port in &ports {
            if backend == Backend::Container {
                let (name, tag) = image();
                // Host networking: nodes announce 127.0.0.1:PORT, which the client can dial.
                let c = GenericImage::new(name, tag)
                    .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
                    .with_network("host")
                    .with_cmd(args(port))
                    .with_startup_timeout(Duration::from_secs(30))
                    .start()
                    .await
                    .expect("start a Redis Cluster node container");
                containers.push(c);
            } else {
                processes.push(Process::spawn(port, &args(port)[10..]));
            }
        }
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        for url in &urls {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ping(url).await {
                assert!(
                    Instant::now() < deadline,
                    "cluster node {url} did not come up"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut conns = Vec::new();
        for url in &urls {
            conns.push(
                redis::Client::open(url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            );
        }
        let n = ports.len();
        for (i, conn) in conns.iter_mut().enumerate() {
            let lo = i * 16384 / n;
            let hi = (i + 1) * 16384 / n - 1;
            let _: () = redis::cmd("CLUSTER")
                .arg("SET-CONFIG-EPOCH")
                .arg(i + 1)
                .query_async(conn)
                .await
                .unwrap();
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(lo)
                .arg(hi)
                .query_async(conn)
                .await
                .unwrap();
        }
        for &port in &ports[1..] {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(port)
                .query_async(&mut conns[0])
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ok = true;
            for conn in conns.iter_mut() {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(conn)
                    .await
                    .unwrap();
                ok &= info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{n}"));
            }
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster did not reach cluster_state:ok"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            _containers: containers,
            _processes: processes,
            ports,
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// A direct connection to one node.
    pub async fn node(&self, i: usize) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.urls()[i].as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// A patient connection: the library's own connections time a reply out after 1 s, which a
/// loaded CI machine (a build on both cores, hundreds of callers) can exceed. For tests about
/// exact counts or corruption, not timeouts (see faults.rs).
pub async fn patient(url: &str) -> tollgate_redis::RedisConnection {
    let client = redis::Client::open(url).unwrap();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .unwrap()
        .into()
}

/// Every key of the database `admin` is connected to that matches `pattern` (`*` for all),
/// sorted.
pub async fn scan_keys(
    admin: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(admin)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    keys
}

/// `INFO commandstats` as (command, calls, usec), the commands scripts run included.
pub async fn command_stats(
    admin: &mut redis::aio::MultiplexedConnection,
) -> Vec<(String, u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |f: &str| -> u64 {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(f))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            Some((name.to_owned(), field("calls="), field("usec=")))
        })
        .collect()
}

/// Calls of `command` (lower case) so far.
pub async fn command_calls(admin: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    command_stats(admin)
        .await
        .iter()
        .filter(|(name, _, _)| name == command)
        .map(|(_, calls, _)| calls)
        .sum()
}

/// A patient Cluster connection (see [`patient`]).
pub async fn patient_cluster(
    urls: impl IntoIterator<Item = String>,
) -> tollgate_redis::RedisConnection {
    redis::cluster::ClusterClientBuilder::new(urls)
        .connection_timeout(Duration::from_secs(10))
        .response_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
        .into()
}
