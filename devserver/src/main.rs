//! `lkagent-devserver`: run a local LiveKit-compatible agent dispatcher.
//!
//! ```text
//! lkagent-devserver [serve] [--port|-p PORT] [--bind ADDR] [--keys LIST] [--insecure]
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
//! The server's flags work with or without the word `serve`, and fall back
//! to `LKAGENT_DEVSERVER_PORT`, `LKAGENT_DEVSERVER_BIND`, `LIVEKIT_KEYS`,
//! `LKAGENT_DEVSERVER_MAX_*` (the caps) and `LKAGENT_DEVSERVER_FAULT_SEED`
//! (fault mode); logs follow `RUST_LOG` (default `info`). The client
//! commands talk to `--url` (`LIVEKIT_URL`, default `http://127.0.0.1:7880`)
//! with `--api-key` / `--api-secret` (`LIVEKIT_API_KEY` /
//! `LIVEKIT_API_SECRET`, default the dev pair) through the official Rust
//! server SDK, and print JSON. Every command and subcommand has `--help`;
//! a bad flag or value exits with code 2 and names it.
//!
//! The command line is declared with clap's derive (`Cli`); the values a
//! parser can refuse (port, address, keys, numbers) are refused by clap, so
//! its error names the flag (or its environment variable) and the value. A
//! key list's error names the entry and its key, never a secret.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use lkagent_devserver::{
    DEFAULT_MAX_DISPATCHES, DEFAULT_MAX_PARTICIPANTS, DEFAULT_MAX_ROOMS, DEFAULT_MAX_WORKERS,
    DEV_KEY, DevServer, DevServerConfig, FaultConfig, KeyParseError, MAX_JOBS, parse_keys,
};
use tracing_subscriber::EnvFilter;

const DEFAULT_PORT: u16 = 7880;
/// [`DEV_KEY`] as a key list, the `--keys` default (a test checks they agree).
const DEV_KEYS: &str = "devkey:secret";
const DEFAULT_URL: &str = "http://127.0.0.1:7880";

/// A local LiveKit-compatible agent dispatcher
///
/// Serves the agent websocket (/agent), the Twirp services the official
/// server SDKs call (rooms, agent dispatches), development endpoints that
/// stand in for room events, and a live dashboard at /dashboard (its link,
/// which logs you in, is printed at start). With no command it serves, and the server's
/// flags work with or without the word `serve`. The other commands are
/// clients of a running server: they sign their requests with an API key
/// and print the answer as JSON.
#[derive(Parser)]
#[command(
    name = "lkagent-devserver",
    version,
    args_conflicts_with_subcommands = true,
    // a flag given twice takes its last value, as before clap
    args_override_self = true,
    after_help = "Logs follow RUST_LOG (default info). Each command has its own --help."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The server's flags without the word `serve`.
    #[command(flatten)]
    serve: ServeArgs,
}

/// What to do: serve, or ask a running server.
#[derive(Subcommand)]
enum Command {
    /// Run the dev server (the default: its flags work without this word)
    ///
    /// Listens on 127.0.0.1:7880 unless told otherwise and prints the
    /// environment a worker needs to connect; Ctrl-C stops it.
    Serve(ServeArgs),
    /// Create, list and delete agent dispatches on a running server
    Dispatch {
        /// The server and the key to sign with.
        #[command(flatten)]
        client: ClientArgs,
        /// The action.
        #[command(subcommand)]
        action: DispatchAction,
    },
    /// Create, list and delete rooms on a running server
    Room {
        /// The server and the key to sign with.
        #[command(flatten)]
        client: ClientArgs,
        /// The action.
        #[command(subcommand)]
        action: RoomAction,
    },
    /// Add simulated participants to a room on a running server
    ///
    /// A participant joining starts the room's participant jobs; its first
    /// published track starts the publisher jobs.
    Participant {
        /// The server and the key to sign with.
        #[command(flatten)]
        client: ClientArgs,
        /// The action.
        #[command(subcommand)]
        action: ParticipantAction,
    },
}

/// The server's flags. No `Debug`: it holds the API secrets.
#[derive(Args, Clone)]
struct ServeArgs {
    /// Port to listen on (0 picks a free one)
    #[arg(
        short,
        long,
        env = "LKAGENT_DEVSERVER_PORT",
        value_name = "PORT",
        default_value_t = DEFAULT_PORT
    )]
    port: u16,
    /// Address to listen on
    ///
    /// Beyond loopback the dev key pair is refused unless --insecure is
    /// given: set your own keys with --keys.
    #[arg(
        long,
        env = "LKAGENT_DEVSERVER_BIND",
        value_name = "ADDR",
        default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST)
    )]
    bind: IpAddr,
    /// API keys, as KEY:SECRET[,KEY:SECRET...]
    ///
    /// livekit-server's LIVEKIT_KEYS form, "key: secret" entries on separate
    /// lines, works too. The first key is the one printed for workers. A bad
    /// list is refused naming the entry and its key, never a secret.
    #[arg(
        long,
        env = "LIVEKIT_KEYS",
        hide_env_values = true,
        value_name = "LIST",
        default_value = DEV_KEYS,
        value_parser = KeysParser
    )]
    keys: Keys,
    /// Listen beyond loopback with the dev key pair all the same
    ///
    /// Refused otherwise: everyone knows that secret.
    #[arg(long)]
    insecure: bool,
    /// The caps.
    #[command(flatten)]
    caps: Caps,
    /// Fault mode: drop connections, terminate and repeat at random, from seed N
    ///
    /// Drops worker connections and terminates jobs at random moments (one
    /// every 200 ms on average), sends 1 in 20 availability requests and
    /// assignments twice, and restarts every failed job. The same seed
    /// replays the same schedule. For trying a worker under chaos.
    #[arg(
        long,
        env = "LKAGENT_DEVSERVER_FAULT_SEED",
        value_name = "N",
        help_heading = "Fault mode"
    )]
    fault_seed: Option<u64>,
}

/// The `--max-*` flags: over one, a Twirp or /dev call answers
/// resource_exhausted (HTTP 429) and a registering worker is closed with
/// code 1013 (try again later).
#[derive(Args, Clone)]
struct Caps {
    /// Most connected workers; one more is closed with code 1013
    #[arg(
        long = "max-workers",
        env = "LKAGENT_DEVSERVER_MAX_WORKERS",
        value_name = "N",
        default_value_t = DEFAULT_MAX_WORKERS,
        help_heading = "Caps (over one: resource_exhausted, HTTP 429)"
    )]
    workers: usize,
    /// Most rooms
    #[arg(
        long = "max-rooms",
        env = "LKAGENT_DEVSERVER_MAX_ROOMS",
        value_name = "N",
        default_value_t = DEFAULT_MAX_ROOMS,
        help_heading = "Caps (over one: resource_exhausted, HTTP 429)"
    )]
    rooms: usize,
    /// Most simulated participants per room
    #[arg(
        long = "max-participants",
        env = "LKAGENT_DEVSERVER_MAX_PARTICIPANTS",
        value_name = "N",
        default_value_t = DEFAULT_MAX_PARTICIPANTS,
        help_heading = "Caps (over one: resource_exhausted, HTTP 429)"
    )]
    participants: usize,
    /// Most live dispatches (a deleted one is forgotten)
    #[arg(
        long = "max-dispatches",
        env = "LKAGENT_DEVSERVER_MAX_DISPATCHES",
        value_name = "N",
        default_value_t = DEFAULT_MAX_DISPATCHES,
        help_heading = "Caps (over one: resource_exhausted, HTTP 429)"
    )]
    dispatches: usize,
    /// Most job records; the oldest finished go first, live jobs never
    #[arg(
        long = "max-jobs",
        env = "LKAGENT_DEVSERVER_MAX_JOBS",
        value_name = "N",
        default_value_t = MAX_JOBS,
        help_heading = "Caps (over one: resource_exhausted, HTTP 429)"
    )]
    jobs: usize,
}

/// API keys and their secrets. No `Debug` or `Display`: never printed.
#[derive(Clone)]
struct Keys(Vec<(String, String)>);

/// Parses `--keys` with [`parse_keys`]. Its error names the flag, the entry
/// and, where there is one, the entry's key; unlike clap's own value
/// errors, never the value, which holds secrets.
#[derive(Clone)]
struct KeysParser;

impl TypedValueParser for KeysParser {
    type Value = Keys;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Keys, clap::Error> {
        let refuse = |why: String| {
            let flag = arg.map_or_else(|| "--keys <LIST>".to_owned(), ToString::to_string);
            let env = arg
                .and_then(clap::Arg::get_env)
                .map(|name| format!(" (or {})", name.to_string_lossy()))
                .unwrap_or_default();
            cmd.clone().error(
                ErrorKind::ValueValidation,
                format!(
                    "invalid value for '{flag}'{env}: {why}; expected KEY:SECRET[,KEY:SECRET...] \
                     (the value is not shown: it holds secrets)"
                ),
            )
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("not UTF-8".to_owned()))?;
        parse_keys(text)
            .map(Keys)
            .map_err(|err| refuse(key_error(text, &err)))
    }
}

/// `err` for a person: which entry, and its key when it has one.
fn key_error(text: &str, err: &KeyParseError) -> String {
    // the entries as parse_keys counts them
    let entry = |index: usize| {
        text.split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .nth(index)
    };
    match err {
        KeyParseError::MissingColon { index } => {
            format!("entry {} has no ':' between key and secret", index + 1)
        }
        KeyParseError::Empty { index } => match entry(*index).and_then(|e| e.split_once(':')) {
            Some((key, _)) if !key.trim().is_empty() => {
                format!(
                    "entry {} (key {:?}) has an empty secret",
                    index + 1,
                    key.trim()
                )
            }
            _ => format!("entry {} has an empty key", index + 1),
        },
        other => other.to_string(),
    }
}

/// Where the client commands send their requests, and as whom. No `Debug`:
/// it holds the API secret.
#[derive(Args)]
struct ClientArgs {
    /// URL of the running server (ws:// and wss:// work too)
    #[arg(
        long,
        global = true,
        env = "LIVEKIT_URL",
        value_name = "URL",
        default_value = DEFAULT_URL,
        help_heading = "Server"
    )]
    url: String,
    /// API key to sign the requests with
    #[arg(
        long,
        global = true,
        env = "LIVEKIT_API_KEY",
        value_name = "KEY",
        default_value = DEV_KEY.0,
        help_heading = "Server"
    )]
    api_key: String,
    /// API secret to sign the requests with
    #[arg(
        long,
        global = true,
        env = "LIVEKIT_API_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        default_value = DEV_KEY.1,
        help_heading = "Server"
    )]
    api_secret: String,
}

/// `dispatch create|list|delete`.
#[derive(Subcommand)]
enum DispatchAction {
    /// Dispatch an agent to a room; prints the dispatch
    Create {
        /// Room to dispatch to (created if missing)
        room: String,
        /// Agent name to dispatch (default: the workers registered without one)
        agent: Option<String>,
        /// Metadata handed to the job, as is
        metadata: Option<String>,
    },
    /// List a room's dispatches
    List {
        /// Room whose dispatches to list
        room: String,
    },
    /// Delete a dispatch; its jobs end
    Delete {
        /// Room the dispatch is in
        room: String,
        /// Id of the dispatch, as `create` or `list` printed it
        dispatch_id: String,
    },
}

/// `room create|list|delete`.
#[derive(Subcommand)]
enum RoomAction {
    /// Create a room; the default dispatch gives it a job
    Create {
        /// Name of the room
        room: String,
    },
    /// List the rooms
    List,
    /// Delete a room, its dispatches and its jobs
    Delete {
        /// Name of the room
        room: String,
    },
}

/// `participant join|publish`.
#[derive(Subcommand)]
enum ParticipantAction {
    /// A participant joins a room (created if missing): its participant jobs start
    Join {
        /// Name of the room
        room: String,
        /// Identity of the participant
        identity: String,
        /// Publish a first track at once: its publisher jobs start too
        #[arg(long)]
        publish: bool,
    },
    /// A participant publishes its first track: its publisher jobs start
    Publish {
        /// Name of the room
        room: String,
        /// Identity of the participant, who has joined
        identity: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serve = match cli.command {
        None => cli.serve,
        Some(Command::Serve(serve)) => serve,
        Some(Command::Dispatch { client, action }) => {
            return client::run(client, client::Request::Dispatch(action));
        }
        Some(Command::Room { client, action }) => {
            return client::run(client, client::Request::Room(action));
        }
        Some(Command::Participant { client, action }) => {
            return client::run(client, client::Request::Participant(action));
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    actix_rt::System::new().block_on(run(serve))
}

async fn run(args: ServeArgs) -> ExitCode {
    let keys = args.keys.0;
    let (key, secret) = keys[0].clone();
    let config = DevServerConfig {
        bind: SocketAddr::new(args.bind, args.port),
        keys,
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
    // The link carries a token: printed for whoever runs the server, never
    // logged.
    println!("watch it in a browser (the link logs you in for a day):");
    println!("  dashboard: {}", server.dashboard_url());
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("error: cannot wait for Ctrl-C: {e}");
    }
    println!("stopping");
    server.stop().await;
    ExitCode::SUCCESS
}

mod client {
    //! The client commands: the official SDK against a running dev server.

    use std::process::ExitCode;

    use livekit_protocol::CreateAgentDispatchRequest;
    use lkagent_devserver::official_api::access_token::{AccessToken, VideoGrants};
    use lkagent_devserver::official_api::services::agent_dispatch::AgentDispatchClient;
    use lkagent_devserver::official_api::services::room::{CreateRoomOptions, RoomClient};

    use super::{ClientArgs, DispatchAction, ParticipantAction, RoomAction};

    /// One client command's request.
    pub enum Request {
        /// `dispatch ...`
        Dispatch(DispatchAction),
        /// `room ...`
        Room(RoomAction),
        /// `participant ...`
        Participant(ParticipantAction),
    }

    fn print<T: serde::Serialize>(value: &T) {
        match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: cannot print the answer: {e}"),
        }
    }

    /// Sends `request` to the server `client` names and prints the answer;
    /// exits 1 if the server refused or could not be reached.
    pub fn run(client: ClientArgs, request: Request) -> ExitCode {
        let result = actix_rt::System::new().block_on(send(&client, request));
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    async fn send(client: &ClientArgs, request: Request) -> Result<(), String> {
        let ClientArgs {
            url,
            api_key: key,
            api_secret: secret,
        } = client;
        let dispatches = || AgentDispatchClient::with_api_key(url, key, secret);
        let rooms = || RoomClient::with_api_key(url, key, secret);
        match request {
            Request::Dispatch(DispatchAction::Create {
                room,
                agent,
                metadata,
            }) => {
                let req = CreateAgentDispatchRequest {
                    room,
                    agent_name: agent.unwrap_or_default(),
                    metadata: metadata.unwrap_or_default(),
                    ..Default::default()
                };
                print(
                    &dispatches()
                        .create_dispatch(req)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            Request::Dispatch(DispatchAction::List { room }) => print(
                &dispatches()
                    .list_dispatch(&room)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            Request::Dispatch(DispatchAction::Delete { room, dispatch_id }) => print(
                &dispatches()
                    .delete_dispatch(&dispatch_id, &room)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            Request::Room(RoomAction::Create { room }) => print(
                &rooms()
                    .create_room(&room, CreateRoomOptions::default())
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            Request::Room(RoomAction::List) => print(
                &rooms()
                    .list_rooms(vec![])
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            Request::Room(RoomAction::Delete { room }) => {
                rooms()
                    .delete_room(&room)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("deleted {room}");
            }
            Request::Participant(ParticipantAction::Join {
                room,
                identity,
                publish,
            }) => {
                let body = serde_json::json!({"identity": identity, "publish": publish});
                let path = format!("/dev/rooms/{room}/participants");
                post(client, &room, &path, body.to_string()).await?;
            }
            Request::Participant(ParticipantAction::Publish { room, identity }) => {
                let path = format!("/dev/rooms/{room}/participants/{identity}/publish");
                post(client, &room, &path, String::new()).await?;
            }
        }
        Ok(())
    }

    async fn post(client: &ClientArgs, room: &str, path: &str, body: String) -> Result<(), String> {
        let token = AccessToken::with_api_key(&client.api_key, &client.api_secret)
            .with_grants(VideoGrants {
                room_admin: true,
                room: room.to_owned(),
                ..Default::default()
            })
            .to_jwt()
            .map_err(|e| e.to_string())?;
        let base = client
            .url
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_default_key_list_is_the_dev_pair() {
        let keys = parse_keys(DEV_KEYS).unwrap();
        assert_eq!(keys, [(DEV_KEY.0.to_owned(), DEV_KEY.1.to_owned())]);
    }

    #[test]
    fn a_key_error_names_the_entry_and_its_key_but_no_secret() {
        let text = "a:topsecret, b:";
        let err = parse_keys(text).unwrap_err();
        let said = key_error(text, &err);
        assert!(said.contains("entry 2") && said.contains("\"b\""), "{said}");
        assert!(!said.contains("topsecret"), "{said}");
        let text = "a:topsecret,b=hidden";
        let said = key_error(text, &parse_keys(text).unwrap_err());
        assert!(
            said.contains("entry 2") && !said.contains("hidden"),
            "{said}"
        );
    }
}
