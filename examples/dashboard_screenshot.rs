//! Makes the README's screenshot of the dev server's dashboard: a dev
//! server, two workers running the demo agent, a few dispatches that
//! succeed, fail and keep running, then headless Chromium opens the
//! dashboard and the page is written as a PNG.
//!
//! ```text
//! cargo run --example dashboard_screenshot                  # docs/dashboard.png
//! cargo run --example dashboard_screenshot -- --out shot.png --width 1400
//! ```
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `CHROME_BIN` and
//! `CHROMEDRIVER`), as the browser tests do.

#[path = "../tests/dashboard/browser.rs"]
#[allow(dead_code)] // the tests use more of the harness than this
mod browser;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use livekit_protocol::CreateAgentDispatchRequest;
use lkagent::demo::DemoAgent;
use lkagent::{GetState, Worker, WorkerOptions};
use lkagent_devserver::official_api::services::agent_dispatch::AgentDispatchClient;
use lkagent_devserver::official_api::services::room::{CreateRoomOptions, RoomClient};
use lkagent_devserver::{DevServer, DevServerConfig, DispatchRequest};

/// Write a screenshot of the dev server's dashboard with a few jobs in it.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Where to write the PNG.
    #[arg(long, value_name = "FILE", default_value = "docs/dashboard.png")]
    out: PathBuf,
    /// Width of the browser's viewport, in CSS pixels.
    #[arg(long, value_name = "PX", default_value_t = 1400)]
    width: u32,
    /// Height of the browser's viewport, in CSS pixels.
    #[arg(long, value_name = "PX", default_value_t = 1400)]
    height: u32,
}

/// Room, agent, the demo agent's plan, and the pause before the next one.
const JOBS: [(&str, &str, &str, u64); 7] = [
    ("support-1", "", r#"{"duration_ms": 900}"#, 500),
    ("support-2", "", r#"{"duration_ms": 60000}"#, 700),
    (
        "sales-1",
        "greeter",
        r#"{"duration_ms": 600, "outcome": "fail"}"#,
        600,
    ),
    ("sales-2", "greeter", r#"{"duration_ms": 60000}"#, 900),
    ("support-3", "", r#"{"duration_ms": 1500}"#, 800),
    ("sales-3", "greeter", r#"{"duration_ms": 60000}"#, 700),
    ("support-4", "", r#"{"duration_ms": 60000}"#, 0),
];

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let server = DevServer::start(DevServerConfig::default()).await?;
    let (key, secret) = DevServerConfig::default().keys[0].clone();
    let options = |agent: &str| {
        WorkerOptions::new(server.ws_url(), key.clone(), secret.clone())
            .agent_name(agent)
            .max_jobs(4)
            .load_intervals(Duration::from_millis(250), Duration::from_millis(500))
    };
    let workers = [
        Worker::builder(options("")).handler(DemoAgent).start()?,
        Worker::builder(options("greeter"))
            .handler(DemoAgent)
            .start()?,
    ];
    for worker in &workers {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !worker.send(GetState).await?.connected {
            if std::time::Instant::now() > deadline {
                return Err("a worker did not register within 15 s".into());
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let browser = browser::Browser::start().await;
    browser.set_viewport_size(args.width, args.height).await;
    browser.goto(&server.dashboard_url()).await;
    browser
        .wait_for("#live[data-state=live]", Duration::from_secs(15))
        .await?;

    // rooms and dispatches as an application makes them, through the
    // official SDK: a room with its default dispatch, and a dispatch of the
    // greeter into a room of its own (created with its default dispatch)
    let rooms = RoomClient::with_api_key(&server.http_url(), &key, &secret);
    rooms
        .create_room("lobby", CreateRoomOptions::default())
        .await?;
    AgentDispatchClient::with_api_key(&server.http_url(), &key, &secret)
        .create_dispatch(CreateAgentDispatchRequest {
            room: "sales-floor".into(),
            agent_name: "greeter".into(),
            metadata: r#"{"duration_ms": 60000}"#.into(),
            ..Default::default()
        })
        .await?;
    for (room, agent, plan, pause) in JOBS {
        let request = DispatchRequest::room(room).agent_name(agent).metadata(plan);
        if let Err(e) = server.dispatch(request).await {
            eprintln!("could not dispatch {room}: {e}");
        }
        actix_rt::time::sleep(Duration::from_millis(pause)).await;
    }
    // the load charts fill for a few seconds
    actix_rt::time::sleep(Duration::from_secs(4)).await;
    let errors = browser.console_errors().await;
    if !errors.is_empty() {
        return Err(format!("the page logged errors: {errors:?}").into());
    }
    let png = browser.screenshot_png().await;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &png)?;
    println!("wrote {} ({} bytes)", args.out.display(), png.len());
    browser.close().await;
    for worker in workers {
        worker.stop().await;
    }
    server.stop().await;
    Ok(())
}
