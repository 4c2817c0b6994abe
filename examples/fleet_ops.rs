//! What a fleet costs Redis: commands per second, read from Redis's own
//! counters (`INFO commandstats`), for fleets of W workers with J jobs each
//! that all save state continually, at the default liveness (4 s) and a 1 s
//! checkpoint interval.
//!
//! ```text
//! cargo run --release --features redis --example fleet_ops   # needs redis-server
//! ```
//!
//! Each configuration gets a fresh `redis-server` and dev server; the
//! workers run in this process (each with its own Redis connection). Once
//! every job runs and its first checkpoint landed, the commands Redis
//! serves over a 5 s window are counted: heartbeats, orphan scans and the
//! batched write-behind. Job starts and ends are outside the window.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use lkagent::recovery::RedisCheckpointStore;
use lkagent::{JobContext, JobError, JobHandler, Worker, WorkerOptions};
use lkagent_devserver::{DevServer, DevServerConfig, DispatchRequest};

type Error = Box<dyn std::error::Error>;

/// What a fleet costs Redis, in commands per second
///
/// For fleets of W workers with J jobs each, read from Redis's own counters
/// over a 5 s window. Needs redis-server on the PATH (each configuration
/// gets a fresh one) and the `redis` feature.
#[derive(Parser)]
#[command(name = "fleet_ops")]
struct Args {}

const WINDOW: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(60);

/// Saves a counter every 50 ms until terminated: every job is dirty at
/// every checkpoint interval.
struct Saver;

impl JobHandler for Saver {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let mut turn = 0u64;
        loop {
            turn += 1;
            ctx.checkpoint()
                .save("turn", &turn)
                .map_err(|e| JobError::failed(e.to_string()))?;
            tokio::select! {
                _ = ctx.cancelled() => return Ok(()),
                _ = actix_rt::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

struct Redis(Child, String);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Result<Redis, Error> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server ({e}): apt-get install redis-server"))?;
    Ok(Redis(child, format!("redis://127.0.0.1:{port}")))
}

/// Calls Redis has served, by command.
fn calls(url: &str) -> Result<Vec<(String, u64)>, Error> {
    let mut connection = redis::Client::open(url)?.get_connection()?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut connection)?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let count = rest
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), count))
        })
        .collect())
}

fn total(stats: &[(String, u64)], name: Option<&str>) -> u64 {
    stats
        .iter()
        .filter(|(n, _)| name.is_none_or(|name| n == name))
        .map(|(_, c)| c)
        .sum()
}

async fn measure(workers: usize, jobs_each: usize) -> Result<(f64, f64, f64), Error> {
    let redis = redis()?;
    let server = DevServer::start(DevServerConfig {
        bind: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await?;
    let start = Instant::now();
    let store = loop {
        match RedisCheckpointStore::connect(&redis.1, "ops").await {
            Ok(store) => break store,
            Err(err) if start.elapsed() > DEADLINE => return Err(err.into()),
            Err(_) => actix_rt::time::sleep(Duration::from_millis(50)).await,
        }
    };
    drop(store);
    let mut running = Vec::new();
    for n in 0..workers {
        let store = RedisCheckpointStore::connect(&redis.1, "ops").await?;
        let mut options =
            WorkerOptions::new(server.ws_url(), "devkey", "secret").max_jobs(jobs_each);
        options.instance_id = format!("ops-{n}");
        options.checkpoint_interval = Duration::from_secs(1);
        running.push(
            Worker::builder(options)
                .checkpoint_store(store)
                .handler(Saver)
                .start()?,
        );
    }
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().filter(|w| w.connected).count() == workers
        })
        .await?;
    let jobs = workers * jobs_each;
    for batch in 0..jobs.div_ceil(100) {
        let placed = futures_util::future::join_all(
            (0..100.min(jobs - batch * 100))
                .map(|n| server.dispatch(DispatchRequest::room(format!("ops-{batch}-{n}")))),
        )
        .await;
        if let Some(Err(err)) = placed.into_iter().find(|p| p.is_err()) {
            return Err(err.into());
        }
    }
    let start = Instant::now();
    loop {
        let mut connection = redis::Client::open(redis.1.as_str())?.get_connection()?;
        let landed: usize = redis::cmd("HLEN")
            .arg("{ops}:claims")
            .query(&mut connection)?;
        if landed == jobs {
            break;
        }
        if start.elapsed() > DEADLINE {
            return Err(format!("{landed} of {jobs} records landed").into());
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    // one interval for the starts' writes to settle
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let before = calls(&redis.1)?;
    let window = Instant::now();
    actix_rt::time::sleep(WINDOW).await;
    let after = calls(&redis.1)?;
    let seconds = window.elapsed().as_secs_f64();
    let rate = |name: Option<&str>| (total(&after, name) - total(&before, name)) as f64 / seconds;
    // what the workers sent; the rest ran inside their scripts (INFO counts
    // a script's own calls too)
    let sent: f64 = SENT.iter().map(|name| rate(Some(name))).sum();
    let all = rate(None) - 1.0 / seconds; // less the INFO itself
    let scripts = rate(Some("evalsha"));
    for worker in running {
        worker.stop().await;
    }
    server.stop().await;
    Ok((sent, scripts, all - sent))
}

/// The commands a worker sends itself; every other command counted ran
/// inside a script.
const SENT: [&str; 5] = ["evalsha", "psetex", "hgetall", "exists", "hmget"];

#[actix::main]
async fn main() -> Result<(), Error> {
    Args::parse();
    println!(
        "| workers | jobs per worker | jobs | commands sent/s | of which scripts/s | sent/s per worker | commands run inside scripts/s |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (workers, jobs_each) in [(1, 100), (1, 1000), (2, 1000), (4, 500), (4, 1000)] {
        let (sent, scripts, inside) = measure(workers, jobs_each).await?;
        println!(
            "| {workers} | {jobs_each} | {} | {sent:.1} | {scripts:.1} | {:.1} | {inside:.0} |",
            workers * jobs_each,
            sent / workers as f64
        );
    }
    Ok(())
}
