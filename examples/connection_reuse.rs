//! What jobs save by sharing websocket connections: N short jobs (default
//! 500, 50 at a time), each one request and its answer over a websocket to
//! an echo server on loopback — first with a fresh connection per job, as a
//! process per job must open, then through a `ConnectionPool` (once with a
//! cap as high as the concurrency, once with the default cap of 8 per host).
//! For each, the connections opened, the time from asking to holding a ready
//! connection (mean and p99), and the wall time.
//!
//! ```text
//! cargo run --release --example connection_reuse [-- --jobs 500 --concurrency 50 --rounds 3]
//! cargo run --release --example connection_reuse -- --help
//! ```
//!
//! The echo server runs on a thread of its own; the jobs are tasks on one
//! actix arbiter. Loopback understates the saving: here a fresh connection
//! costs a TCP handshake and the websocket upgrade inside one machine, while
//! over the internet a fresh `wss://` connection pays TCP, TLS and the
//! upgrade in round trips to the provider before the first byte.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use lkagent::ConnectionPool;
use lkagent::connections::ConnectionPoolOptions;
use lkagent::connections::tungstenite::{Error as WsError, Message};
use tokio::sync::Semaphore;

type Error = Box<dyn std::error::Error>;

/// How the jobs get their connection.
#[derive(Clone)]
enum Source {
    /// A fresh connection per job, closed when the job ends.
    Fresh,
    /// Checked out of this pool, given back when the job ends.
    Pool(ConnectionPool),
}

/// What one run measured.
struct Run {
    opened: u64,
    ready: Vec<Duration>,
    wall: Duration,
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    // 0 counts as 1
    let (jobs, concurrency, rounds) = (
        args.jobs.max(1),
        args.concurrency.max(1),
        args.rounds.max(1),
    );
    let url = format!("ws://{}/v1/stream?model=demo", echo_server()?);
    actix_rt::System::new().block_on(async move {
        println!(
            "{jobs} jobs, {concurrency} at a time, one request and answer each; \
             {rounds} rounds per row, each from a cold start\n"
        );
        println!(
            "| connections | opened per round | ready, mean | p50 | p99 | wall per round (median) |\n\
             | --- | --- | --- | --- | --- | --- |"
        );
        let by_concurrency = ConnectionPoolOptions {
            max_per_host: concurrency,
            max_total: concurrency,
            ..Default::default()
        };
        let rows: [(String, Option<ConnectionPoolOptions>); 3] = [
            ("a fresh one per job".into(), None),
            (
                format!("pool, max_per_host {concurrency}"),
                Some(by_concurrency),
            ),
            (
                "pool, default caps (8 per host)".into(),
                Some(ConnectionPoolOptions::default()),
            ),
        ];
        for (name, options) in rows {
            let mut runs = Vec::new();
            for _ in 0..rounds {
                let source = match &options {
                    None => Source::Fresh,
                    Some(options) => Source::Pool(ConnectionPool::new(options.clone())?),
                };
                runs.push(run(&url, source, jobs, concurrency).await?);
            }
            print_row(&name, &runs);
        }
        Ok(())
    })
}

/// Runs `jobs` jobs, `concurrency` at a time, each getting its connection
/// from `source`.
async fn run(url: &str, source: Source, jobs: usize, concurrency: usize) -> Result<Run, Error> {
    let permits = Arc::new(Semaphore::new(concurrency));
    let ready = Rc::new(std::cell::RefCell::new(Vec::with_capacity(jobs)));
    let started = Instant::now();
    let mut running = Vec::with_capacity(jobs);
    for n in 0..jobs {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let (url, source, ready) = (url.to_owned(), source.clone(), Rc::clone(&ready));
        running.push(actix_rt::spawn(async move {
            let result = job(n, &url, &source).await;
            drop(permit);
            result.map(|took| ready.borrow_mut().push(took))
        }));
    }
    for job in running {
        job.await?.map_err(|e| format!("a job failed: {e}"))?;
    }
    let wall = started.elapsed();
    let opened = match &source {
        Source::Fresh => jobs as u64,
        Source::Pool(pool) => pool.stats().opened,
    };
    let ready = ready.take();
    Ok(Run {
        opened,
        ready,
        wall,
    })
}

/// One job: get a connection, send a request, read its answer; returns how
/// long getting the connection took.
async fn job(n: usize, url: &str, source: &Source) -> Result<Duration, String> {
    let asked = Instant::now();
    let request = format!("job-{n} hello");
    match source {
        Source::Fresh => {
            let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
                .await
                .map_err(|e| e.to_string())?;
            let took = asked.elapsed();
            exchange(&mut ws, &request).await?;
            let _ = ws.close(None).await;
            Ok(took)
        }
        Source::Pool(pool) => {
            let mut ws = pool.websocket(url).await.map_err(|e| e.to_string())?;
            let took = asked.elapsed();
            exchange(&mut ws, &request).await?;
            Ok(took) // dropping `ws` gives it back
        }
    }
}

/// One request and its answer, over anything that sends and receives
/// websocket messages: a bare stream, or a `PooledWebSocket` (whose own
/// `Sink` and `Stream` notice a broken connection and keep it out of the
/// pool).
async fn exchange<S>(ws: &mut S, request: &str) -> Result<(), String>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    ws.send(Message::text(request))
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(answer))) if answer.as_str() == request => Ok(()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

fn print_row(name: &str, runs: &[Run]) {
    let mut ready: Vec<_> = runs
        .iter()
        .flat_map(|run| run.ready.iter().copied())
        .collect();
    ready.sort();
    let mut walls: Vec<_> = runs.iter().map(|run| run.wall).collect();
    walls.sort();
    let mean = ready.iter().sum::<Duration>() / ready.len().max(1) as u32;
    let at = |percent: usize| ready[(ready.len() * percent).div_ceil(100).saturating_sub(1)];
    println!(
        "| {name} | {} | {} | {} | {} | {} |",
        runs[0].opened,
        show(mean),
        show(at(50)),
        show(at(99)),
        show(walls[walls.len() / 2])
    );
}

fn show(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1e3;
    if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} µs", ms * 1e3)
    }
}

/// A websocket echo server on 127.0.0.1, on a thread (and runtime) of its
/// own; returns its address.
fn echo_server() -> Result<std::net::SocketAddr, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((socket, _)) = listener.accept().await {
                actix_rt::spawn(async move {
                    let _ = socket.set_nodelay(true);
                    let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if (message.is_text() || message.is_binary())
                            && ws.send(message).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        })
    });
    Ok(addr)
}

/// What jobs save by sharing websocket connections
///
/// Runs N short jobs, each one request and its answer over a websocket to an
/// echo server on loopback: first with a fresh connection per job, then
/// through a ConnectionPool (capped at the concurrency, then at the default
/// 8 per host). Prints, for each, the connections opened, the time to a
/// ready connection (mean, p50, p99) and the wall time. Build it with
/// --release.
#[derive(Parser)]
#[command(name = "connection_reuse", args_override_self = true)]
struct Args {
    /// Jobs per round
    #[arg(long, value_name = "N", default_value_t = 500)]
    jobs: usize,
    /// Jobs running at once
    #[arg(long, value_name = "N", default_value_t = 50)]
    concurrency: usize,
    /// Rounds per row, each from a cold start; the row shows their median
    #[arg(long, value_name = "N", default_value_t = 3)]
    rounds: usize,
}
