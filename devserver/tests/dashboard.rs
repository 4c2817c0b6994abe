//! The dashboard over plain HTTP: who may open it (login, link token,
//! cookie, bearer), what its API answers, that its actions reach the
//! dispatcher, and that its event stream pushes each change. The page
//! itself is tested in a real browser in the root crate's
//! `tests/dashboard/`.

mod common;

use awc::http::StatusCode;
use futures_util::StreamExt;
use livekit_api::access_token::VideoGrants;
use livekit_protocol::JobStatus;
use lkagent_devserver::{DevServer, DevServerConfig, DispatchRequest};

use common::*;

fn client() -> awc::Client {
    // no redirects followed: the tests look at them
    awc::Client::builder().disable_redirects().finish()
}

/// `GET path` with these headers: (status, headers, body).
async fn get(
    server: &DevServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, awc::http::header::HeaderMap, String) {
    let mut req = client().get(format!("{}{path}", server.http_url()));
    for (name, value) in headers {
        req = req.insert_header((*name, *value));
    }
    let mut resp = req.send().await.expect("request sent");
    let body = resp.body().await.expect("body read");
    (
        resp.status(),
        resp.headers().clone(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// An admin token of every room (what opens the dashboard) signed with
/// this pair.
fn admin_token(key: &str, secret: &str) -> String {
    lkagent_devserver::official_api::access_token::AccessToken::with_api_key(key, secret)
        .with_grants(VideoGrants {
            room_admin: true,
            room_create: true,
            room_list: true,
            ..Default::default()
        })
        .to_jwt()
        .unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The `lkagent_dashboard=…` pair of a `set-cookie` header.
fn session_cookie(headers: &awc::http::header::HeaderMap) -> String {
    let set = headers
        .get("set-cookie")
        .expect("a cookie is set")
        .to_str()
        .unwrap();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Lax"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

#[actix_rt::test]
async fn the_page_needs_a_key_and_its_secret() {
    let server = server().await;
    let (status, headers, body) = get(&server, "/dashboard", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("action=\"/dashboard/login\""), "{body}");
    assert!(!body.contains("id=\"jobs\""), "no dashboard without a key");
    assert!(headers.get("content-security-policy").is_some());

    // a wrong secret: the login page again, and no cookie
    let mut resp = client()
        .post(format!("{}/dashboard/login", server.http_url()))
        .send_form(&[("key", "devkey"), ("secret", "guess")])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("set-cookie").is_none());
    let body = String::from_utf8_lossy(&resp.body().await.unwrap()).into_owned();
    assert!(body.contains("Wrong API key or secret"), "{body}");

    // the right pair: a session cookie that opens the page
    let resp = client()
        .post(format!("{}/dashboard/login", server.http_url()))
        .send_form(&[("key", "devkey"), ("secret", "secret")])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers().get("location").unwrap(), "/dashboard");
    let cookie = session_cookie(resp.headers());
    let (status, _, body) = get(&server, "/dashboard", &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("id=\"jobs\""), "{body}");
    // and it opens the API too
    let (status, _, _) = get(&server, "/dashboard/api/state", &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_rt::test]
async fn the_printed_link_is_traded_for_a_cookie_and_a_forged_one_is_refused() {
    let server = server().await;
    let url = server.dashboard_url();
    let path = url.strip_prefix(&server.http_url()).unwrap();
    let (status, headers, _) = get(&server, path, &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers.get("location").unwrap(), "/dashboard");
    let cookie = session_cookie(&headers);
    let (status, _, _) = get(&server, "/dashboard", &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK);

    // a token of an unknown key, of the right key with a wrong secret, and a
    // worker's token: none opens the page
    let other_key = admin_token("devkey", "not-the-secret");
    for token in [other_key, dev_token(), "not-a-jwt".to_owned()] {
        let (status, headers, body) = get(&server, &format!("/dashboard?token={token}"), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
        assert!(headers.get("set-cookie").is_none());
        assert!(
            body.contains("That link does not open this dashboard"),
            "{body}"
        );
        let cookie = format!("lkagent_dashboard={token}");
        let (status, _, _) = get(&server, "/dashboard", &[("cookie", &cookie)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[actix_rt::test]
async fn a_wrong_key_cannot_call_the_api() {
    let server = server_with(DevServerConfig {
        keys: vec![("fleet".into(), "fleet-secret".into())],
        ..Default::default()
    })
    .await;
    let (_conn, _) = worker_as(&server, &token("fleet", "fleet-secret", true), "").await;
    // the dev pair is not a key of this server
    let devkey = admin_token("devkey", "secret");
    let (status, _, body) = get(
        &server,
        "/dashboard/api/state",
        &[("authorization", &bearer(&devkey))],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("unauthenticated"), "{body}");
    assert!(!body.contains("AW_"), "no state leaks: {body}");
    let (status, _, _) = get(
        &server,
        "/dashboard/api/events",
        &[("authorization", &bearer(&devkey))],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, json) = post_json(
        &server,
        "/dashboard/api/rooms",
        &devkey,
        serde_json::json!({"name": "r"}),
    )
    .await;
    assert_eq!(
        (status, json["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    assert_eq!(server.counts().await.rooms, 0, "nothing was created");

    // the server's own key, through its link's token, is let in
    let (status, _, body) = get(
        &server,
        "/dashboard/api/state",
        &[("authorization", &bearer(&server.dashboard_token()))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("AW_"), "{body}");
}

#[actix_rt::test]
async fn the_state_lists_workers_rooms_and_job_timelines() {
    let server = server().await;
    let (mut conn, worker_id) = worker(&server, "greeter").await;
    let token = server.dashboard_token();
    let (status, _) = post_json(
        &server,
        "/dashboard/api/dispatches",
        &token,
        serde_json::json!({"room": "lobby", "agent_name": "greeter", "metadata": "{\"x\":1}"}),
    )
    .await;
    assert_eq!(status, 200);
    let job = expect_availability(&mut conn).await;
    answer(&mut conn, &job.id, true, "agent-1").await;
    let _assignment = next_msg(&mut conn).await;
    update_job(&mut conn, &job.id, JobStatus::JsRunning, "").await;
    update_job(&mut conn, &job.id, JobStatus::JsFailed, "the model is down").await;
    server
        .wait_job(&job.id, DEADLINE, |j| j.status == JobStatus::JsFailed)
        .await
        .unwrap();

    let (status, _, body) = get(
        &server,
        "/dashboard/api/state",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    let worker = &state["workers"][0];
    assert_eq!(worker["id"], worker_id.as_str());
    assert_eq!(worker["agent_name"], "greeter");
    assert_eq!(worker["connected"], true);
    assert_eq!(worker["protocol"], 1);
    let room = &state["rooms"][0];
    assert_eq!(room["name"], "lobby");
    // the room was created by the dispatch, with its default dispatch first
    let dispatches = room["dispatches"].as_array().unwrap();
    let greeter = dispatches
        .iter()
        .find(|d| d["agent_name"] == "greeter")
        .expect("the dispatch is listed in its room");
    assert_eq!(greeter["job_ids"][0], job.id.as_str());
    let listed = state["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == job.id.as_str())
        .expect("the job is listed");
    assert_eq!(listed["status"], "failed");
    assert_eq!(listed["error"], "the model is down");
    let steps: Vec<&str> = listed["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["pending", "assigned", "running", "failed"]);
    assert_eq!(listed["timeline"][1]["worker_id"], worker_id.as_str());
    // the room's default dispatch made a job too (no default worker here)
    assert_eq!(state["counts"]["jobs"], 2);
}

#[actix_rt::test]
async fn terminate_and_drop_act_on_the_server() {
    let server = server().await;
    let (mut conn, worker_id) = worker(&server, "").await;
    let token = server.dashboard_token();
    let dispatching = {
        let server = server.clone();
        actix_rt::spawn(async move { server.dispatch(DispatchRequest::room("r1")).await })
    };
    let job = expect_availability(&mut conn).await;
    answer(&mut conn, &job.id, true, "agent").await;
    dispatching.await.unwrap().expect("assigned");
    let _assignment = next_msg(&mut conn).await;

    let path = format!("/dashboard/api/jobs/{}/terminate", job.id);
    let (status, _) = post_json(&server, &path, &token, serde_json::json!({})).await;
    assert_eq!(status, 200);
    match next_msg(&mut conn).await {
        livekit_protocol::server_message::Message::Termination(t) => assert_eq!(t.job_id, job.id),
        other => panic!("expected a termination, got {other:?}"),
    }
    let ended = server.job(&job.id).await.unwrap();
    assert_eq!(ended.status, JobStatus::JsSuccess);
    // a second time: the job is not running any more
    let (status, json) = post_json(&server, &path, &token, serde_json::json!({})).await;
    assert_eq!(
        (status, json["code"].as_str()),
        (412, Some("failed_precondition"))
    );
    let (status, json) = post_json(
        &server,
        "/dashboard/api/jobs/AJ_nope/terminate",
        &token,
        serde_json::json!({}),
    )
    .await;
    assert_eq!((status, json["code"].as_str()), (404, Some("not_found")));

    let path = format!("/dashboard/api/workers/{worker_id}/drop");
    let (status, _) = post_json(&server, &path, &token, serde_json::json!({})).await;
    assert_eq!(status, 200);
    assert!(closed(&mut conn).await, "the socket is dropped");
    server
        .wait_workers(DEADLINE, |ws| ws.iter().all(|w| !w.connected))
        .await
        .expect("the worker is seen gone");
}

#[actix_rt::test]
async fn actions_must_be_json_and_are_checked_like_the_apis() {
    let server = server().await;
    let token = server.dashboard_token();
    // a form post (what a cross-site page can send) is refused
    let (status, _, body) = post(
        &server,
        "/dashboard/api/rooms",
        "application/x-www-form-urlencoded",
        Some(&token),
        b"name=r".to_vec(),
    )
    .await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert_eq!(server.counts().await.rooms, 0);
    // a body that does not decode names the problem
    let (status, _, body) = post(
        &server,
        "/dashboard/api/dispatches",
        "application/json",
        Some(&token),
        b"{\"agent_name\": 7}".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("malformed"));
    // a participant joins and publishes through the same code as /dev
    let (status, _) = post_json(
        &server,
        "/dashboard/api/participants",
        &token,
        serde_json::json!({"room": "r", "identity": "alice"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, json) = post_json(
        &server,
        "/dashboard/api/participants/publish",
        &token,
        serde_json::json!({"room": "r", "identity": "bob"}),
    )
    .await;
    assert_eq!((status, json["code"].as_str()), (404, Some("not_found")));
    let (status, _) = post_json(
        &server,
        "/dashboard/api/participants/publish",
        &token,
        serde_json::json!({"room": "r", "identity": "alice"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(server.counts().await.participants, 1);
    // the caps hold for the dashboard as for Twirp
    let capped = server_with(DevServerConfig {
        max_rooms: 1,
        ..Default::default()
    })
    .await;
    let token = capped.dashboard_token();
    for (name, expected) in [("a", 200), ("b", 429)] {
        let (status, _) = post_json(
            &capped,
            "/dashboard/api/rooms",
            &token,
            serde_json::json!({ "name": name }),
        )
        .await;
        assert_eq!(status, expected, "room {name}");
    }
}

/// Reads server-sent events until one `state` event's data satisfies `pred`.
async fn next_state(
    body: &mut (
             impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin
         ),
    buffer: &mut String,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .filter(|_| event.starts_with("event: state"))
            {
                let state: serde_json::Value = serde_json::from_str(data).unwrap();
                if pred(&state) {
                    return state;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("a matching state is pushed in time")
            .expect("the stream stays open")
            .expect("the stream reads");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[actix_rt::test]
async fn the_event_stream_pushes_each_change() {
    let server = server().await;
    let token = server.dashboard_token();
    let mut resp = client()
        .get(format!("{}/dashboard/api/events", server.http_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let body = &mut resp;
    let mut buffer = String::new();
    let first = next_state(body, &mut buffer, |_| true).await;
    assert_eq!(first["workers"].as_array().unwrap().len(), 0);

    let (_conn, worker_id) = worker(&server, "").await;
    let state = next_state(body, &mut buffer, |s| {
        s["workers"].as_array().is_some_and(|w| !w.is_empty())
    })
    .await;
    assert_eq!(state["workers"][0]["id"], worker_id.as_str());

    room_client(&server)
        .create_room("pushed", Default::default())
        .await
        .unwrap();
    next_state(body, &mut buffer, |s| s["rooms"][0]["name"] == "pushed").await;
}

#[actix_rt::test]
async fn event_streams_are_bounded() {
    let server = server().await;
    let token = server.dashboard_token();
    let open = |token: String| {
        let url = format!("{}/dashboard/api/events", server.http_url());
        async move { client().get(url).bearer_auth(token).send().await.unwrap() }
    };
    let mut streams = Vec::new();
    for _ in 0..lkagent_devserver::dashboard::MAX_EVENT_STREAMS {
        let resp = open(token.clone()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        streams.push(resp);
    }
    let refused = open(token.clone()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // a page that goes away frees its place once the server writes to it
    // (the next change, or the keep-alive): make changes until it has
    drop(streams.pop());
    let rooms = room_client(&server);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for n in 0.. {
        rooms
            .create_room(&format!("change-{n}"), Default::default())
            .await
            .unwrap();
        let resp = open(token.clone()).await;
        if resp.status() == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place of a closed stream is freed"
        );
    }
}

#[actix_rt::test]
async fn assets_are_embedded_and_unknown_ones_are_not_found() {
    let server = server().await;
    for (path, content_type) in [
        ("/dashboard/assets/app.js", "text/javascript"),
        ("/dashboard/assets/style.css", "text/css"),
        ("/dashboard/assets/icon.svg", "image/svg+xml"),
    ] {
        let (status, headers, body) = get(&server, path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let ct = headers.get("content-type").unwrap().to_str().unwrap();
        assert!(ct.starts_with(content_type), "{path}: {ct}");
        assert!(!body.is_empty());
    }
    let (status, _, _) = get(&server, "/dashboard/assets/../Cargo.toml", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // the health answer at / is unchanged
    let (status, _, body) = get(&server, "/", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "OK"));
}

#[actix_rt::test]
async fn the_event_stream_ends_when_the_server_stops() {
    let server = server().await;
    let mut resp = client()
        .get(format!("{}/dashboard/api/events", server.http_url()))
        .bearer_auth(server.dashboard_token())
        .send()
        .await
        .unwrap();
    let body = &mut resp;
    let mut buffer = String::new();
    next_state(body, &mut buffer, |_| true).await;
    server.stop().await;
    // whatever was still buffered, then the end
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ends with the server");
}

#[actix_rt::test]
async fn a_load_the_protocol_cannot_mean_is_shown_within_bounds() {
    let server = server().await;
    let (mut conn, worker_id) = worker(&server, "").await;
    for load in [f32::NAN, 7.5] {
        send(
            &mut conn,
            livekit_protocol::worker_message::Message::UpdateWorker(
                livekit_protocol::UpdateWorkerStatus {
                    load,
                    ..Default::default()
                },
            ),
        )
        .await;
    }
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().any(|w| w.id == worker_id && w.update_count == 2)
        })
        .await
        .unwrap();
    let (_, _, body) = get(
        &server,
        "/dashboard/api/state",
        &[("authorization", &bearer(&server.dashboard_token()))],
    )
    .await;
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["workers"][0]["load"], 1.0, "{body}");
    let history = state["workers"][0]["load_history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .all(|s| s[1].as_f64().is_some_and(|l| (0.0..=1.0).contains(&l))),
        "{body}"
    );
}

#[actix_rt::test]
async fn terminate_of_a_job_still_offered_is_refused_and_its_placement_goes_on() {
    let server = server().await;
    let (mut conn, worker_id) = worker(&server, "").await;
    let token = server.dashboard_token();
    let dispatching = {
        let server = server.clone();
        actix_rt::spawn(async move { server.dispatch(DispatchRequest::room("r")).await })
    };
    // offered: asked for availability, not answered yet
    let job = expect_availability(&mut conn).await;
    let path = format!("/dashboard/api/jobs/{}/terminate", job.id);
    let (status, json) = post_json(&server, &path, &token, serde_json::json!({})).await;
    assert_eq!(
        (status, json["code"].as_str()),
        (412, Some("failed_precondition"))
    );
    answer(&mut conn, &job.id, true, "agent").await;
    let placed = dispatching.await.unwrap().expect("assigned all the same");
    assert_eq!(placed.worker_id.as_deref(), Some(worker_id.as_str()));
}

#[actix_rt::test]
async fn a_worker_dropped_from_the_dashboard_keeps_its_running_job_to_claim() {
    let server = server().await;
    let (mut conn, worker_id) = worker(&server, "").await;
    let dispatching = {
        let server = server.clone();
        actix_rt::spawn(async move { server.dispatch(DispatchRequest::room("r")).await })
    };
    let job = expect_availability(&mut conn).await;
    answer(&mut conn, &job.id, true, "agent").await;
    dispatching.await.unwrap().expect("assigned");
    let _assignment = next_msg(&mut conn).await;
    update_job(&mut conn, &job.id, JobStatus::JsRunning, "").await;

    let path = format!("/dashboard/api/workers/{worker_id}/drop");
    let (status, _) = post_json(
        &server,
        &path,
        &server.dashboard_token(),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(closed(&mut conn).await, "the socket is dropped");
    // the job is not failed: the worker, back on a new connection, claims it
    let (mut again, new_id) = worker(&server, "").await;
    send(
        &mut again,
        livekit_protocol::worker_message::Message::MigrateJob(
            livekit_protocol::MigrateJobRequest {
                job_ids: vec![job.id.clone()],
            },
        ),
    )
    .await;
    let claimed = server
        .wait_job(&job.id, DEADLINE, |j| {
            j.worker_id.as_deref() == Some(new_id.as_str())
        })
        .await
        .expect("the reconnected worker claims its job");
    assert_eq!(claimed.status, JobStatus::JsRunning);
    assert!(claimed.ended_at.is_none());
}
