//! `swarmlet debug ...`: developer tools that drive one layer by hand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::io::{self, BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use argh::FromArgs;

use super::UsageError;
use crate::netio::keyfile;
use crate::netio::transport::{os_random, Driver};
use crate::transport::key::decode_hex32;
use crate::transport::{Config, Event, PeerKey, Psk, MAX_MESSAGE_SIZE};

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "debug")]
/// Developer tools that drive one layer by hand.
pub struct DebugCommand {
    #[argh(subcommand)]
    pub command: DebugSubcommand,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand)]
pub enum DebugSubcommand {
    Transport(TransportCommand),
    Info(InfoCommand),
    Write(WriteCommand),
}

#[cfg_attr(test, derive(argh::ArgsInfo))]
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "write")]
/// Commit label writes on this node's record through Raft (run on the leader): a load
/// for measuring commit throughput and the log's bounds.
pub struct WriteCommand {
    /// how many writes
    #[argh(option)]
    pub count: u64,

    /// writes in flight at once (default 256)
    #[argh(option, default = "256")]
    pub in_flight: u64,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "info")]
/// Print what the local daemon knows about itself: id, role, leader (never forwarded).
pub struct InfoCommand {}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "transport")]
/// Exercise the encrypted UDP transport (Noise IKpsk2) between two endpoints.
pub struct TransportCommand {
    #[argh(subcommand)]
    pub command: TransportSubcommand,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand)]
pub enum TransportSubcommand {
    Listen(TransportListen),
    Send(TransportSend),
    Demo(TransportDemo),
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "listen")]
/// Accept handshakes and print each message received.
pub struct TransportListen {
    /// UDP address to listen on (default 127.0.0.1:2377)
    #[argh(option, default = "SocketAddr::from(([127, 0, 0, 1], 2377))")]
    pub listen: SocketAddr,

    /// file holding this node's 32-byte x25519 secret; created with mode 0600 if missing
    #[argh(option)]
    pub key: PathBuf,

    /// pre-shared key, 64 hex digits
    #[argh(option)]
    pub psk: Option<String>,

    /// exit after this many messages (default: run until killed)
    #[argh(option)]
    pub count: Option<u64>,

    /// send each message back to its sender
    #[argh(switch)]
    pub echo: bool,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "send")]
/// Handshake with a listener and send messages.
pub struct TransportSend {
    /// the listener's UDP address
    #[argh(option)]
    pub to: SocketAddr,

    /// the listener's x25519 public key, 64 hex digits
    #[argh(option)]
    pub peer_key: String,

    /// file holding this node's 32-byte x25519 secret (default: a random ephemeral key)
    #[argh(option)]
    pub key: Option<PathBuf>,

    /// pre-shared key, 64 hex digits
    #[argh(option)]
    pub psk: Option<String>,

    /// message text to send
    #[argh(option)]
    pub message: Option<String>,

    /// send a generated message of this many bytes instead of --message
    #[argh(option)]
    pub size: Option<usize>,

    /// how many messages to send (default 1)
    #[argh(option, default = "1")]
    pub count: u64,

    /// wait for each message to come back and compare it
    #[argh(switch)]
    pub expect_echo: bool,

    /// give up after this many seconds (default 10)
    #[argh(option, default = "10")]
    pub timeout_secs: u64,

    /// local UDP address to send from (default 127.0.0.1:0)
    #[argh(option, default = "SocketAddr::from(([127, 0, 0, 1], 0))")]
    pub bind: SocketAddr,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "demo")]
/// Run a listener and a sender in one process on loopback.
pub struct TransportDemo {}

pub fn run(global: &super::Global, cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd.command {
        DebugSubcommand::Info(_) => info(global),
        DebugSubcommand::Write(w) => write(global, w),
        DebugSubcommand::Transport(transport) => match transport.command {
            TransportSubcommand::Listen(args) => listen(args),
            TransportSubcommand::Send(args) => send(args),
            TransportSubcommand::Demo(_) => demo(),
        },
    }
}

fn info(global: &super::Global) -> anyhow::Result<ExitCode> {
    let crate::api::Response::Info(i) = super::call(global, &crate::api::Request::Info)? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    println!("node_id={}", i.node_id);
    println!("key={}", i.key);
    println!("cluster_id={}", opt(i.cluster_id));
    println!(
        "role={}",
        opt(i.role.map(|r| format!("{r:?}").to_lowercase()))
    );
    println!("leader={}", opt(i.leader.map(|l| l.to_string())));
    println!("listen={}", opt(i.listen.map(|a| a.to_string())));
    println!("advertise={}", opt(i.advertise.map(|a| a.to_string())));
    for (name, n) in &i.counters {
        println!("{name}={n}");
    }
    Ok(ExitCode::SUCCESS)
}

fn write(global: &super::Global, w: WriteCommand) -> anyhow::Result<ExitCode> {
    use crate::api::{call_streaming, Request};
    let req = Request::DebugWrite {
        count: w.count,
        in_flight: w.in_flight,
    };
    let start = Instant::now();
    // A long load has no intermediate frames: wait as long as it takes.
    match call_streaming(&global.socket, &req, None, |_| {})? {
        crate::api::Response::Done(_) => {}
        crate::api::Response::Error(e) => anyhow::bail!(e),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} writes committed in {secs:.3} s ({:.0} per second)",
        w.count,
        w.count as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// Parses an optional `--psk`; absent means all zeros (no pre-shared key).
fn resolve_psk(psk: Option<&str>) -> anyhow::Result<Psk> {
    match psk {
        None => Ok([0; 32]),
        Some(s) => decode_hex32(s).map_err(|e| UsageError(format!("--psk: {e}")).into()),
    }
}

/// A recognisable test message: bytes 0..251 repeating (251 is prime, so the pattern
/// does not line up with fragment boundaries).
fn pattern(len: usize) -> Vec<u8> {
    (0..=250u8).cycle().take(len).collect()
}

fn preview(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(s) if data.len() <= 80 && !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => format!("<{} bytes>", data.len()),
    }
}

fn listen(args: TransportListen) -> anyhow::Result<ExitCode> {
    let psk = resolve_psk(args.psk.as_deref())?;
    let secret = keyfile::load_or_create(&args.key, os_random()?)?;
    let mut driver = Driver::bind(args.listen, secret, Config::default())
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    // The first line is what scripts (and `demo`) read to find us.
    println!("listening {} {}", driver.local_addr()?, driver.public_key());
    io::stdout().flush()?;
    // A debugging tool: any key that knows the PSK may talk.
    let mut policy = |_: &PeerKey, _: SocketAddr| Some(psk);
    smol::block_on(async {
        let mut received = 0u64;
        while args.count.is_none_or(|c| received < c) {
            match driver.next_event(&mut policy).await? {
                Event::Message { peer, data } => {
                    received += 1;
                    println!(
                        "message from {} {} bytes {}",
                        peer.short(),
                        data.len(),
                        preview(&data)
                    );
                    if args.echo {
                        driver.send(peer, &data)?;
                    }
                }
                Event::Connected { peer } => println!("session with {}", peer.short()),
                Event::Unreachable { peer, dropped } => {
                    println!(
                        "peer {} unreachable, {dropped} messages dropped",
                        peer.short()
                    );
                }
            }
            io::stdout().flush()?;
        }
        driver.flush().await?;
        let s = driver.stats();
        println!(
            "done: {received} messages, {} datagrams dropped",
            s.dropped()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// What `send` resolved its flags to.
struct SendPlan {
    to: SocketAddr,
    peer: PeerKey,
    psk: Psk,
    message: Vec<u8>,
    count: u64,
    expect_echo: bool,
    timeout: Duration,
}

impl SendPlan {
    fn resolve(args: &TransportSend) -> anyhow::Result<SendPlan> {
        let peer = PeerKey::from_hex(&args.peer_key)
            .map_err(|e| UsageError(format!("--peer-key: {e}")))?;
        let message = match (&args.message, args.size) {
            (Some(_), Some(_)) => {
                return Err(
                    UsageError("--message and --size cannot be used together".into()).into(),
                )
            }
            (_, Some(n)) if n > MAX_MESSAGE_SIZE => {
                return Err(UsageError(format!(
                    "--size: {n} bytes exceeds the {MAX_MESSAGE_SIZE}-byte message limit"
                ))
                .into())
            }
            (_, Some(n)) => pattern(n),
            (Some(m), None) => m.clone().into_bytes(),
            (None, None) => b"hello".to_vec(),
        };
        if args.count == 0 {
            return Err(UsageError("--count: must be at least 1".into()).into());
        }
        if args.timeout_secs == 0 {
            return Err(UsageError("--timeout-secs: must be at least 1".into()).into());
        }
        Ok(SendPlan {
            to: args.to,
            peer,
            psk: resolve_psk(args.psk.as_deref())?,
            message,
            count: args.count,
            expect_echo: args.expect_echo,
            timeout: Duration::from_secs(args.timeout_secs),
        })
    }
}

fn send(args: TransportSend) -> anyhow::Result<ExitCode> {
    let plan = SendPlan::resolve(&args)?;
    let secret = match &args.key {
        Some(path) => keyfile::load_or_create(path, os_random()?)?,
        None => os_random()?,
    };
    let mut driver = Driver::bind(args.bind, secret, Config::default())
        .with_context(|| format!("--bind {}: cannot bind", args.bind))?;
    driver
        .endpoint_mut()
        .set_peer(plan.peer, plan.to, plan.psk)
        .map_err(|e| UsageError(format!("--peer-key: {e}")))?;
    let report = run_sender(&mut driver, &plan)?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// Sends the plan's messages (waiting for each echo if asked) and describes the result.
fn run_sender(driver: &mut Driver, plan: &SendPlan) -> anyhow::Result<String> {
    let start = Instant::now();
    let mut deny = |_: &PeerKey, _: SocketAddr| None;
    let work = async {
        for _ in 0..plan.count {
            driver.send(plan.peer, &plan.message)?;
            while plan.expect_echo || !driver.endpoint_mut().is_connected(&plan.peer) {
                match driver.next_event(&mut deny).await? {
                    Event::Message { peer, data } if peer == plan.peer => {
                        anyhow::ensure!(
                            data == plan.message,
                            "echo from {} differs from what was sent ({} bytes back, {} sent)",
                            plan.to,
                            data.len(),
                            plan.message.len()
                        );
                        break;
                    }
                    Event::Unreachable { .. } => {
                        anyhow::bail!(
                            "{} ({}) did not answer the handshake",
                            plan.to,
                            plan.peer.short()
                        )
                    }
                    _ => {}
                }
            }
        }
        driver.flush().await?;
        Ok(())
    };
    let deadline = async {
        async_io::Timer::after(plan.timeout).await;
        anyhow::bail!(
            "no answer from {} within {} s (wrong --peer-key or --psk, or nothing listening?)",
            plan.to,
            plan.timeout.as_secs()
        )
    };
    smol::block_on(smol::future::or(work, deadline))?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let bytes = plan.count * plan.message.len() as u64;
    let echoed = if plan.expect_echo {
        ", every echo verified"
    } else {
        ""
    };
    Ok(format!(
        "sent {} message(s), {bytes} bytes, to {} in {ms:.1} ms{echoed}",
        plan.count, plan.to
    ))
}

/// Two processes on loopback: this one sends, a child `listen --echo` answers.
fn demo() -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("swarmlet-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let sizes = [0usize, 64 * 1024, MAX_MESSAGE_SIZE];
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "debug",
            "transport",
            "listen",
            "--listen",
            "127.0.0.1:0",
            "--echo",
        ])
        .arg("--key")
        .arg(dir.join("listener.key"))
        .args(["--count", &sizes.len().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the listener process")?;
    let result = demo_with(&mut child, &sizes);
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn demo_with(child: &mut std::process::Child, sizes: &[usize]) -> anyhow::Result<ExitCode> {
    let stdout = child.stdout.take().context("listener has no stdout")?;
    let mut lines = io::BufReader::new(stdout).lines();
    let first = lines
        .next()
        .context("listener exited before printing its address")??;
    let mut words = first.split_whitespace().skip(1);
    let (Some(addr), Some(key)) = (words.next(), words.next()) else {
        anyhow::bail!("unexpected first line from listener: {first:?}");
    };
    println!(
        "listener process {} on {addr}, static key {key}",
        child.id()
    );
    let mut driver = Driver::bind("127.0.0.1:0".parse()?, os_random()?, Config::default())?;
    let peer = PeerKey::from_hex(key)?;
    let to: SocketAddr = addr.parse()?;
    driver.endpoint_mut().set_peer(peer, to, [0; 32])?;
    println!(
        "sender on {}, static key {}",
        driver.local_addr()?,
        driver.public_key()
    );
    for &size in sizes {
        let plan = SendPlan {
            to,
            peer,
            psk: [0; 32],
            message: if size == 0 {
                b"hello over Noise IKpsk2".to_vec()
            } else {
                pattern(size)
            },
            count: 1,
            expect_echo: true,
            timeout: Duration::from_secs(10),
        };
        println!("{}", run_sender(&mut driver, &plan)?);
    }
    for line in lines {
        println!("  listener: {}", line?);
    }
    let s = driver.stats();
    println!(
        "sender stats: {} datagrams sent, {} received, {} handshake(s), {} dropped",
        s.datagrams_sent,
        s.datagrams_received,
        s.handshakes_completed,
        s.dropped()
    );
    Ok(ExitCode::SUCCESS)
}
