//! The dev server's dashboard in a real browser: it loads without a console
//! error, shows a worker within a second of its registration, runs a
//! dispatch made on the page to SUCCESS, has a participant join and publish,
//! ends a job and drops a worker from its buttons, and opens for nobody
//! without a key of the server.

use std::time::{Duration, Instant};

use fantoccini::Locator;
use lkagent::Worker;
use lkagent::demo::DemoAgent;
use lkagent::proto::JobStatus;
use lkagent_devserver::official_api::services::room::RoomClient;
use lkagent_devserver::{DevServer, DispatchRequest};
use serde_json::json;

use crate::browser::Browser;
use crate::common;

/// How soon the page must show a change (the issue's promise).
const LIVE: Duration = Duration::from_secs(1);
/// The longest anything else is waited for.
const DEADLINE: Duration = Duration::from_secs(15);

/// A browser on the dashboard, logged in by the link the server prints,
/// with the first state rendered and no console error so far.
async fn open(server: &DevServer) -> Browser {
    let browser = Browser::start().await;
    browser.goto(&server.dashboard_url()).await;
    let url = browser.client().current_url().await.unwrap();
    assert_eq!(url.path(), "/dashboard");
    assert!(url.query().is_none(), "the token leaves the address: {url}");
    browser
        .wait_for("#live[data-state=live]", DEADLINE)
        .await
        .expect("the page connects to its event stream");
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser
}

/// Ends a test: the page logged no error all along, the browser and the
/// worker stop.
async fn clean_end(browser: Browser, worker: Worker) {
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.close().await;
    worker.stop().await;
}

/// Types `value` into the form's input `name`.
async fn fill(browser: &Browser, form: &str, name: &str, value: &str) {
    let input = browser
        .client()
        .find(Locator::Css(&format!("#{form} input[name={name}]")))
        .await
        .unwrap();
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

/// Clicks the element, looked up afresh until the click lands: a push may
/// redraw it between the lookup and the click (a stale element).
async fn click(browser: &Browser, selector: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let clicked = match browser.wait_for(selector, DEADLINE).await {
            Ok(element) => element.click().await.map(drop),
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("cannot click {selector}: {e}"),
            Err(_) => {}
        }
    }
}

#[actix_rt::test]
async fn the_page_loads_clean_and_a_new_worker_appears_within_a_second() {
    let server = common::devserver().await;
    let browser = open(&server).await;
    assert!(
        browser
            .client()
            .find(Locator::Css("#workers-empty:not([hidden])"))
            .await
            .is_ok(),
        "no worker yet"
    );

    let worker = common::worker(common::options(&server).agent_name("greeter"), DemoAgent);
    let worker_id = common::registered(&worker).await;
    // the server has it: the page must show it within a second
    server
        .wait_workers(DEADLINE, |ws| ws.iter().any(|w| w.id == worker_id))
        .await
        .unwrap();
    let seen = Instant::now();
    let row = format!("#workers tr[data-worker-id={worker_id}]");
    browser
        .wait_for(&row, LIVE)
        .await
        .unwrap_or_else(|e| panic!("the worker is not shown within {LIVE:?}: {e}"));
    assert!(seen.elapsed() <= LIVE + Duration::from_millis(250));
    let agent = browser
        .wait_for_text(&format!("{row} td:first-child"), "greeter", DEADLINE)
        .await;
    assert!(agent.is_ok(), "{agent:?}");
    browser
        .wait_for_text(&format!("{row} .status"), "available", DEADLINE)
        .await
        .unwrap();
    clean_end(browser, worker).await;
}

#[actix_rt::test]
async fn a_dispatch_made_on_the_page_runs_to_success() {
    let server = common::devserver().await;
    let worker = common::worker(common::options(&server).agent_name("greeter"), DemoAgent);
    let worker_id = common::registered(&worker).await;
    let browser = open(&server).await;

    fill(&browser, "create-dispatch", "room", "from-the-page").await;
    fill(&browser, "create-dispatch", "agent_name", "greeter").await;
    fill(
        &browser,
        "create-dispatch",
        "metadata",
        r#"{"duration_ms": 200}"#,
    )
    .await;
    click(&browser, "#create-dispatch button[type=submit]").await;
    browser
        .wait_for_text_matching(
            "#action-result",
            |t| t.starts_with("Dispatch AD_"),
            DEADLINE,
        )
        .await
        .unwrap();

    // the server made the job the page asked for
    let jobs = server
        .wait_jobs(DEADLINE, |jobs| {
            jobs.iter()
                .any(|j| j.room == "from-the-page" && j.agent_name == "greeter")
        })
        .await
        .unwrap();
    let job = jobs.iter().find(|j| j.agent_name == "greeter").unwrap();
    assert_eq!(job.metadata, r#"{"duration_ms": 200}"#);
    let row = format!("#jobs tr[data-job-id={}]", job.id);
    browser
        .wait_for_text(&format!("{row} .status"), "success", DEADLINE)
        .await
        .unwrap();
    let done = server.job(&job.id).await.unwrap();
    assert_eq!(done.status, JobStatus::JsSuccess);
    // its timeline: created, assigned to the worker, running, success
    let steps = browser
        .client()
        .find_all(Locator::Css(&format!("{row} .timeline li")))
        .await
        .unwrap();
    let mut whats = Vec::new();
    for step in steps {
        whats.push(step.attr("data-what").await.unwrap().unwrap_or_default());
    }
    assert_eq!(whats, ["pending", "assigned", "running", "success"]);
    let assigned = browser
        .client()
        .find(Locator::Css(&format!(
            "{row} .timeline li[data-what=assigned]"
        )))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(assigned.contains(&worker_id), "{assigned}");

    // a participant joins the room from the form, then publishes from its
    // button: the server's room counts it as a publisher
    fill(&browser, "join-participant", "room", "from-the-page").await;
    fill(&browser, "join-participant", "identity", "alice").await;
    click(&browser, "#join-participant button[type=submit]").await;
    let alice = "#rooms article[data-room=from-the-page] .participant[data-identity=alice]";
    click(&browser, &format!("{alice} button.publish")).await;
    browser
        .wait_for(&format!("{alice}[data-published=true]"), DEADLINE)
        .await
        .unwrap();
    let rooms = RoomClient::with_api_key(&server.http_url(), common::KEY, common::SECRET)
        .list_rooms(vec!["from-the-page".into()])
        .await
        .unwrap();
    assert_eq!(rooms[0].num_publishers, 1);
    clean_end(browser, worker).await;
}

#[actix_rt::test]
async fn terminate_and_drop_from_the_page() {
    let server = common::devserver().await;
    let worker = common::worker(common::options(&server), DemoAgent);
    let worker_id = common::registered(&worker).await;
    let job = server
        .dispatch(DispatchRequest::room("long-call").metadata(r#"{"duration_ms": 600000}"#))
        .await
        .unwrap();
    common::wait_job(&server, &job.id, "running", |j| {
        j.updates.iter().any(|u| u.status == JobStatus::JsRunning)
    })
    .await;
    let browser = open(&server).await;

    let row = format!("#jobs tr[data-job-id={}]", job.id);
    click(&browser, &format!("{row} button.terminate")).await;
    browser
        .wait_for_text(&format!("{row} .status"), "success", DEADLINE)
        .await
        .unwrap();
    assert_eq!(
        server.job(&job.id).await.unwrap().status,
        JobStatus::JsSuccess
    );
    // the worker was told: its job ends
    common::wait_worker(&worker, "the terminated job ends", |s| {
        s.running_jobs.is_empty()
    })
    .await;
    assert!(
        browser
            .client()
            .find(Locator::Css(&format!("{row} button.terminate")))
            .await
            .is_err(),
        "an ended job has no terminate button"
    );

    // drop the worker's connection: its row goes disconnected, and the
    // worker, reconnecting, shows up again under a new id
    click(
        &browser,
        &format!("#workers tr[data-worker-id={worker_id}] button.drop"),
    )
    .await;
    browser
        .wait_for_text(
            &format!("#workers tr[data-worker-id={worker_id}] .status"),
            "disconnected",
            DEADLINE,
        )
        .await
        .unwrap();
    let state = common::wait_worker(&worker, "a new registration", |s| {
        s.connected && s.worker_id.as_deref() != Some(worker_id.as_str())
    })
    .await;
    let again = state.worker_id.unwrap();
    browser
        .wait_for(&format!("#workers tr[data-worker-id={again}]"), DEADLINE)
        .await
        .unwrap();
    clean_end(browser, worker).await;
}

#[actix_rt::test]
async fn a_wrong_key_opens_neither_the_page_nor_its_api() {
    let server = common::devserver().await;
    let browser = Browser::start().await;
    let dashboard = format!("{}/dashboard", server.http_url());

    // no key: the login page, not the dashboard
    browser.goto(&dashboard).await;
    browser.wait_for("form#login", DEADLINE).await.unwrap();
    assert!(
        browser.client().find(Locator::Css("#jobs")).await.is_err(),
        "no dashboard without a key"
    );

    // the right key with a wrong secret
    fill(&browser, "login", "key", common::KEY).await;
    fill(&browser, "login", "secret", "not-the-secret").await;
    click(&browser, "form#login button[type=submit]").await;
    browser
        .wait_for_text_matching(
            "#login-error",
            |t| t.contains("Wrong API key or secret"),
            DEADLINE,
        )
        .await
        .unwrap();
    assert!(browser.client().find(Locator::Css("#jobs")).await.is_err());

    // a link with a token signed by another secret
    let forged =
        livekit_api::access_token::AccessToken::with_api_key(common::KEY, "not-the-secret")
            .with_grants(livekit_api::access_token::VideoGrants {
                room_admin: true,
                room_create: true,
                room_list: true,
                ..Default::default()
            })
            .to_jwt()
            .unwrap();
    browser.goto(&format!("{dashboard}?token={forged}")).await;
    browser
        .wait_for_text_matching(
            "#login-error",
            |t| t.contains("That link does not open this dashboard"),
            DEADLINE,
        )
        .await
        .unwrap();

    // the API, from the page's own origin, refuses too
    let status = browser
        .client()
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/dashboard/api/state').then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(401));
    let status = browser
        .client()
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/dashboard/api/rooms', {method: 'POST',
               headers: {'content-type': 'application/json'},
               body: JSON.stringify({name: 'sneaky'})}).then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(401));
    assert_eq!(server.counts().await.rooms, 0);

    // the right secret opens it
    browser.goto(&dashboard).await;
    fill(&browser, "login", "key", common::KEY).await;
    fill(&browser, "login", "secret", common::SECRET).await;
    click(&browser, "form#login button[type=submit]").await;
    browser
        .wait_for("#live[data-state=live]", DEADLINE)
        .await
        .unwrap();
    browser.close().await;
}
