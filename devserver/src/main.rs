//! `lkagent-devserver`: run a local LiveKit-compatible agent dispatcher.
//!
//! ```text
//! lkagent-devserver [--port 7880] [--bind 127.0.0.1] [--keys devkey:secret]
//! ```
//! Flags fall back to `LKAGENT_DEVSERVER_PORT`, `LKAGENT_DEVSERVER_BIND` and
//! `LIVEKIT_KEYS`; logs follow `RUST_LOG` (default `info`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use lkagent_devserver::{DEV_KEY, DevServer, DevServerConfig, parse_keys};
use tracing_subscriber::EnvFilter;

const DEFAULT_PORT: u16 = 7880;
const USAGE: &str =
    "usage: lkagent-devserver [--port PORT] [--bind ADDR] [--keys KEY:SECRET[,KEY:SECRET...]]

  --port  PORT   port to listen on (env LKAGENT_DEVSERVER_PORT, default 7880)
  --bind  ADDR   address to listen on (env LKAGENT_DEVSERVER_BIND, default 127.0.0.1)
  --keys  LIST   API keys as key:secret,... or livekit-server's \"key: secret\" lines
                 (env LIVEKIT_KEYS, default devkey:secret)";

struct Args {
    port: u16,
    bind: IpAddr,
    keys: Vec<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut port = std::env::var("LKAGENT_DEVSERVER_PORT").ok();
    let mut bind = std::env::var("LKAGENT_DEVSERVER_BIND").ok();
    let mut keys = std::env::var("LIVEKIT_KEYS").ok();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "--port" | "-p" => &mut port,
            "--bind" => &mut bind,
            "--keys" => &mut keys,
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
    Ok(Args { port, bind, keys })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
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
        ..Default::default()
    };
    let server = match DevServer::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen on {}:{}: {e}", args.bind, args.port);
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
