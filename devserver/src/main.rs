//! `lkagent-devserver`: run a local LiveKit-compatible agent dispatcher.
//!
//! ```text
//! lkagent-devserver [serve] [--port 7880] [--bind 127.0.0.1] [--keys devkey:secret] [--insecure]
//!                   [--max-workers N] [--max-rooms N] [--max-participants N]
//!                   [--max-dispatches N] [--max-jobs N] [--fault-seed N]
//! lkagent-devserver dispatch create ROOM [AGENT] [METADATA]
//! lkagent-devserver dispatch list ROOM
//! lkagent-devserver dispatch delete ROOM DISPATCH_ID
//! lkagent-devserver room create|delete ROOM
//! lkagent-devserver room list
//! lkagent-devserver participant join ROOM IDENTITY [--publish]
//! lkagent-devserver participant publish ROOM IDENTITY
//! ```
//! Server flags fall back to `LKAGENT_DEVSERVER_PORT`, `LKAGENT_DEVSERVER_BIND`,
//! `LIVEKIT_KEYS`, `LKAGENT_DEVSERVER_MAX_*` (the caps) and
//! `LKAGENT_DEVSERVER_FAULT_SEED` (fault mode); logs follow
//! `RUST_LOG` (default `info`). The client
//! subcommands talk to `LIVEKIT_URL` (default `http://127.0.0.1:7880`) with
//! `LIVEKIT_API_KEY` / `LIVEKIT_API_SECRET` (default the dev pair) through the
//! official Rust server SDK, and print JSON.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use lkagent_devserver::{
    DEFAULT_MAX_DISPATCHES, DEFAULT_MAX_PARTICIPANTS, DEFAULT_MAX_ROOMS, DEFAULT_MAX_WORKERS,
    DEV_KEY, DevServer, DevServerConfig, FaultConfig, MAX_JOBS, parse_keys,
};
use tracing_subscriber::EnvFilter;

const DEFAULT_PORT: u16 = 7880;

/// The `--help` text, with the caps' defaults.
fn usage() -> String {
    format!(
        "usage: lkagent-devserver [serve] [--port PORT] [--bind ADDR] [--keys KEY:SECRET[,KEY:SECRET...]] [--insecure]
                         [--max-workers N] [--max-rooms N] [--max-participants N]
                         [--max-dispatches N] [--max-jobs N] [--fault-seed N]
       lkagent-devserver dispatch create ROOM [AGENT] [METADATA] | dispatch list ROOM
       lkagent-devserver dispatch delete ROOM DISPATCH_ID
       lkagent-devserver room create ROOM | room list | room delete ROOM
       lkagent-devserver participant join ROOM IDENTITY [--publish]
       lkagent-devserver participant publish ROOM IDENTITY
       (clients use LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET; default the local dev server)

  --port  PORT   port to listen on (env LKAGENT_DEVSERVER_PORT, default 7880)
  --bind  ADDR   address to listen on (env LKAGENT_DEVSERVER_BIND, default 127.0.0.1)
  --keys  LIST   API keys as key:secret,... or livekit-server's \"key: secret\" lines
                 (env LIVEKIT_KEYS, default devkey:secret)
  --insecure     listen beyond loopback with the default devkey:secret all
                 the same (refused otherwise: everyone knows that secret)

Caps (env LKAGENT_DEVSERVER_MAX_WORKERS, ..._MAX_ROOMS, ...): over one, a
Twirp or /dev call answers resource_exhausted (HTTP 429) and a registering
worker is closed with code 1013 (try again later).
  --max-workers       N  connected workers (default {DEFAULT_MAX_WORKERS})
  --max-rooms         N  rooms (default {DEFAULT_MAX_ROOMS})
  --max-participants  N  simulated participants per room (default {DEFAULT_MAX_PARTICIPANTS})
  --max-dispatches    N  live dispatches (default {DEFAULT_MAX_DISPATCHES})
  --max-jobs          N  job records; the oldest finished go first, live jobs
                         never (default {MAX_JOBS})

Fault mode, for trying a worker under chaos (env LKAGENT_DEVSERVER_FAULT_SEED):
  --fault-seed        N  drop worker connections and terminate jobs at random
                         moments (one every 200 ms on average), send 1 in 20
                         availability requests and assignments twice, restart
                         every failed job; the same seed replays the schedule"
    )
}

struct Args {
    port: u16,
    bind: IpAddr,
    keys: Vec<(String, String)>,
    insecure: bool,
    caps: Caps,
    fault_seed: Option<u64>,
}

/// The `--max-*` flags.
struct Caps {
    workers: usize,
    rooms: usize,
    participants: usize,
    dispatches: usize,
    jobs: usize,
}

/// A cap from its flag's value or environment variable, or its default.
fn cap(flag: &str, value: Option<String>, default: usize) -> Result<usize, String> {
    match value {
        Some(v) => v.parse().map_err(|_| format!("bad {flag} {v:?}")),
        None => Ok(default),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut port = std::env::var("LKAGENT_DEVSERVER_PORT").ok();
    let mut bind = std::env::var("LKAGENT_DEVSERVER_BIND").ok();
    let mut keys = std::env::var("LIVEKIT_KEYS").ok();
    let env = |name: &str| std::env::var(format!("LKAGENT_DEVSERVER_{name}")).ok();
    let mut max_workers = env("MAX_WORKERS");
    let mut max_rooms = env("MAX_ROOMS");
    let mut max_participants = env("MAX_PARTICIPANTS");
    let mut max_dispatches = env("MAX_DISPATCHES");
    let mut max_jobs = env("MAX_JOBS");
    let mut fault_seed = env("FAULT_SEED");
    let mut insecure = false;
    let mut args = std::env::args().skip(1).skip_while(|a| a == "serve");
    while let Some(arg) = args.next() {
        if arg == "--insecure" {
            insecure = true;
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "--port" | "-p" => &mut port,
            "--bind" => &mut bind,
            "--keys" => &mut keys,
            "--max-workers" => &mut max_workers,
            "--max-rooms" => &mut max_rooms,
            "--max-participants" => &mut max_participants,
            "--max-dispatches" => &mut max_dispatches,
            "--max-jobs" => &mut max_jobs,
            "--fault-seed" => &mut fault_seed,
            "--help" | "-h" => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg:?}")),
        };
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        *slot = Some(value);
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
        None => DEFAULT_PORT,
    };
    let bind = match bind {
        Some(b) => b.parse().map_err(|_| format!("bad bind address {b:?}"))?,
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let keys = match keys {
        Some(k) => parse_keys(&k).map_err(|e| format!("bad keys: {e}"))?,
        None => vec![(DEV_KEY.0.to_owned(), DEV_KEY.1.to_owned())],
    };
    let caps = Caps {
        workers: cap("--max-workers", max_workers, DEFAULT_MAX_WORKERS)?,
        rooms: cap("--max-rooms", max_rooms, DEFAULT_MAX_ROOMS)?,
        participants: cap(
            "--max-participants",
            max_participants,
            DEFAULT_MAX_PARTICIPANTS,
        )?,
        dispatches: cap("--max-dispatches", max_dispatches, DEFAULT_MAX_DISPATCHES)?,
        jobs: cap("--max-jobs", max_jobs, MAX_JOBS)?,
    };
    let fault_seed = match fault_seed {
        Some(v) => Some(v.parse().map_err(|_| format!("bad --fault-seed {v:?}"))?),
        None => None,
    };
    Ok(Args {
        port,
        bind,
        keys,
        insecure,
        caps,
        fault_seed,
    })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let Some(cmd) = argv.first().map(String::as_str)
        && matches!(cmd, "dispatch" | "room" | "participant")
    {
        return actix_rt::System::new().block_on(client::run(argv));
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{}", usage());
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    actix_rt::System::new().block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let (key, secret) = args.keys[0].clone();
    let config = DevServerConfig {
        bind: SocketAddr::new(args.bind, args.port),
        keys: args.keys,
        insecure: args.insecure,
        max_workers: args.caps.workers,
        max_rooms: args.caps.rooms,
        max_participants: args.caps.participants,
        max_dispatches: args.caps.dispatches,
        max_jobs: args.caps.jobs,
        faults: args.fault_seed.map(FaultConfig::new),
        ..Default::default()
    };
    let server = match DevServer::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot serve on {}:{}: {e}", args.bind, args.port);
            return ExitCode::FAILURE;
        }
    };
    // Print the secret only when it is the well-known dev default.
    let shown_secret = if (key.as_str(), secret.as_str()) == DEV_KEY {
        secret.as_str()
    } else {
        "<your secret>"
    };
    println!("lkagent-devserver listening on {}", server.ws_url());
    println!("point a worker at it:");
    println!(
        "  LIVEKIT_URL={} LIVEKIT_API_KEY={key} LIVEKIT_API_SECRET={shown_secret} cargo run --example worker",
        server.ws_url()
    );
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("error: cannot wait for Ctrl-C: {e}");
    }
    println!("stopping");
    server.stop().await;
    ExitCode::SUCCESS
}

mod client {
    //! The client subcommands: the official SDK against a running dev server.

    use std::process::ExitCode;

    use livekit_protocol::CreateAgentDispatchRequest;
    use lkagent_devserver::DEV_KEY;
    use lkagent_devserver::official_api::access_token::{AccessToken, VideoGrants};
    use lkagent_devserver::official_api::services::agent_dispatch::AgentDispatchClient;
    use lkagent_devserver::official_api::services::room::{CreateRoomOptions, RoomClient};

    const DEFAULT_URL: &str = "http://127.0.0.1:7880";

    fn env_or(name: &str, default: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| default.to_owned())
    }

    fn print<T: serde::Serialize>(value: &T) {
        match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: cannot print the answer: {e}"),
        }
    }

    pub async fn run(argv: Vec<String>) -> ExitCode {
        let url = env_or("LIVEKIT_URL", DEFAULT_URL);
        let key = env_or("LIVEKIT_API_KEY", DEV_KEY.0);
        let secret = env_or("LIVEKIT_API_SECRET", DEV_KEY.1);
        let a: Vec<&str> = argv.iter().map(String::as_str).collect();
        let dispatches = || AgentDispatchClient::with_api_key(&url, &key, &secret);
        let rooms = || RoomClient::with_api_key(&url, &key, &secret);
        let result: Result<(), String> = async {
            match a.as_slice() {
                ["dispatch", "create", room, rest @ ..] => {
                    let req = CreateAgentDispatchRequest {
                        room: (*room).to_owned(),
                        agent_name: rest.first().copied().unwrap_or_default().to_owned(),
                        metadata: rest.get(1).copied().unwrap_or_default().to_owned(),
                        ..Default::default()
                    };
                    print(
                        &dispatches()
                            .create_dispatch(req)
                            .await
                            .map_err(|e| e.to_string())?,
                    );
                }
                ["dispatch", "list", room] => print(
                    &dispatches()
                        .list_dispatch(*room)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                ["dispatch", "delete", room, id] => print(
                    &dispatches()
                        .delete_dispatch(*id, *room)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                ["room", "create", room] => print(
                    &rooms()
                        .create_room(room, CreateRoomOptions::default())
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                ["room", "list"] => print(
                    &rooms()
                        .list_rooms(vec![])
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                ["room", "delete", room] => {
                    rooms().delete_room(room).await.map_err(|e| e.to_string())?;
                    println!("deleted {room}");
                }
                ["participant", "join", room, identity, flags @ ..] => {
                    let publish = flags.contains(&"--publish");
                    let body = serde_json::json!({"identity": identity, "publish": publish});
                    let path = format!("/dev/rooms/{room}/participants");
                    post(&url, &key, &secret, room, &path, body.to_string()).await?;
                }
                ["participant", "publish", room, identity] => {
                    let path = format!("/dev/rooms/{room}/participants/{identity}/publish");
                    post(&url, &key, &secret, room, &path, String::new()).await?;
                }
                _ => return Err(format!("unknown command {argv:?}; see --help")),
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    async fn post(
        url: &str,
        key: &str,
        secret: &str,
        room: &str,
        path: &str,
        body: String,
    ) -> Result<(), String> {
        let token = AccessToken::with_api_key(key, secret)
            .with_grants(VideoGrants {
                room_admin: true,
                room: room.to_owned(),
                ..Default::default()
            })
            .to_jwt()
            .map_err(|e| e.to_string())?;
        let base = url
            .replacen("ws://", "http://", 1)
            .replacen("wss://", "https://", 1);
        let mut resp = awc::Client::new()
            .post(format!("{}{path}", base.trim_end_matches('/')))
            .bearer_auth(token)
            .insert_header(("content-type", "application/json"))
            .send_body(body)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = resp.body().await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&bytes);
        if resp.status().is_success() {
            println!("{text}");
            Ok(())
        } else {
            Err(format!("{}: {text}", resp.status()))
        }
    }
}
