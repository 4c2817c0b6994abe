//! A fleet on Redis, end to end: a dev server, a `redis-server` and three
//! workers in processes of their own; a job is dispatched, the worker
//! running it is killed with SIGKILL, and another worker of the fleet takes
//! the job over from its checkpoint and finishes it.
//!
//! ```text
//! cargo run --features redis --example fleet     # needs redis-server on the PATH
//! ```
//!
//! The workers are this executable again (`--role worker`), each with its
//! own identity (`worker-1` … `worker-3`), sharing one Redis under one key
//! prefix. Their heartbeat lasts 1 s here (the default is 4 s), so the
//! takeover shows within a couple of seconds.

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use lkagent::demo::DemoAgent;
use lkagent::recovery::{CheckpointStore, RedisCheckpointStore};
use lkagent::{Worker, WorkerOptions};
use lkagent_devserver::{DevServer, DevServerConfig, DispatchRequest};

const PREFIX: &str = "fleet-example";
const KEY: &str = "devkey";
const SECRET: &str = "secret";
const DEADLINE: Duration = Duration::from_secs(30);

type Error = Box<dyn std::error::Error>;

/// A fleet on Redis, end to end: a worker killed mid-job, its job taken over
///
/// Starts a dev server, a redis-server (which must be on the PATH) and three
/// workers in processes of their own; dispatches a job, kills the worker
/// running it with SIGKILL, and shows another worker of the fleet take the
/// job over from its checkpoint and finish it. Logs follow RUST_LOG
/// (default warn).
#[derive(Parser)]
#[command(name = "fleet")]
struct Args {
    /// Run as one worker of the fleet: the example starts them itself.
    #[arg(long, num_args = 3, value_names = ["ID", "URL", "REDIS"], hide = true)]
    role: Option<Vec<String>>,
}

/// A child process, killed (SIGKILL) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[actix::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let outcome = match args.role.as_deref() {
        Some([id, url, redis]) => run_worker(id, url, redis).await,
        Some(_) => Err("--role takes ID URL REDIS".into()),
        None => run_fleet().await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// One worker of the fleet: the demo agent, checkpoints in Redis.
async fn run_worker(id: &str, url: &str, redis: &str) -> Result<(), Error> {
    let mut options = WorkerOptions::new(url, KEY, SECRET);
    options.instance_id = id.to_owned();
    options.liveness_ttl = Duration::from_secs(1);
    let store = RedisCheckpointStore::connect(redis, PREFIX).await?;
    let worker = Worker::builder(options)
        .checkpoint_store(store)
        .handler(DemoAgent)
        .start()?;
    worker.stopped().await;
    Ok(())
}

async fn run_fleet() -> Result<(), Error> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _redis = Process(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start redis-server ({e}): apt-get install redis-server")
            })?,
    );
    let redis_url = format!("redis://127.0.0.1:{port}");
    let store = connect(&redis_url).await?;
    println!("redis-server on 127.0.0.1:{port}");

    let server = DevServer::start(DevServerConfig {
        bind: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await?;
    println!("dev server on {}", server.ws_url());

    let mut workers: Vec<(String, Option<Process>)> = Vec::new();
    for n in 1..=3 {
        let id = format!("worker-{n}");
        let child = Command::new(std::env::current_exe()?)
            .args(["--role", &id, &server.ws_url(), &redis_url])
            .spawn()?;
        workers.push((id, Some(Process(child))));
    }
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().filter(|w| w.connected).count() == 3
        })
        .await?;
    println!("3 workers registered");

    let job = server
        .dispatch(DispatchRequest::room("demo").metadata(r#"{"duration_ms": 4000}"#))
        .await?;
    println!("job {} dispatched (4 s of work)", job.id);

    // who holds it, from its checkpoint's claim, once it has run a second
    let holder = until("the job's first second", || async {
        let record = store.get(&job.id).await.ok()??;
        let progress: u64 = record.load("progress_ms").ok()??;
        (progress >= 1000).then(|| record.claim().owner.clone())
    })
    .await?;
    println!("{holder} runs it; killing {holder} (SIGKILL)");
    if let Some((_, process)) = workers.iter_mut().find(|(id, _)| *id == holder) {
        drop(process.take());
    }

    let taker = until("the takeover", || async {
        let record = store.get(&job.id).await.ok()??;
        let claim = record.claim().clone();
        (claim.owner != holder).then(|| format!("{} (fence {})", claim.owner, claim.fence))
    })
    .await?;
    println!("{taker} took it over from its checkpoint");

    let done = server
        .wait_job(&job.id, DEADLINE, |j| {
            j.status != lkagent::proto::JobStatus::JsRunning
        })
        .await?;
    println!("job {}: {:?} {}", job.id, done.status, done.error);
    for update in &done.updates {
        println!("  {:?} from {}", update.status, update.worker_id);
    }
    Ok(())
}

/// Connects to the fresh redis-server, waiting for it to listen.
async fn connect(url: &str) -> Result<RedisCheckpointStore, Error> {
    let start = Instant::now();
    loop {
        match RedisCheckpointStore::connect(url, PREFIX).await {
            Ok(store) => return Ok(store),
            Err(err) if start.elapsed() > Duration::from_secs(10) => return Err(err.into()),
            Err(_) => actix_rt::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Polls `check` every 50 ms until it gives a value, or fails naming `what`
/// at the deadline.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    check: impl Fn() -> F,
) -> Result<T, Error> {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() > DEADLINE {
            return Err(format!("timed out waiting for {what}").into());
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}
