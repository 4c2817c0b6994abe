//! The caps on workers, rooms, participants, dispatches and job records:
//! each one refuses what is beyond it (`resource_exhausted`, HTTP 429, a
//! message naming the flag; a worker closed with 1013 "try again later"),
//! deleted dispatches and finished jobs leave memory, and a flood of
//! creates never holds more than the caps.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use awc::ws::{CloseCode, Frame};
use common::*;
use futures_util::StreamExt;
use livekit_api::access_token::VideoGrants;
use livekit_protocol::{JobStatus, server_message};
use lkagent_devserver::{Counts, DevServer, DevServerConfig, DispatchError, DispatchRequest};

/// Every grant the calls below need, for one room.
fn token_for(room: &str) -> String {
    grant_token(VideoGrants {
        room_create: true,
        room_list: true,
        room_admin: true,
        room: room.to_owned(),
        ..Default::default()
    })
}

fn create_room(room: &str) -> (&'static str, serde_json::Value) {
    (
        "/twirp/livekit.RoomService/CreateRoom",
        serde_json::json!({ "name": room }),
    )
}

fn create_dispatch(room: &str, agent: &str) -> (&'static str, serde_json::Value) {
    (
        "/twirp/livekit.AgentDispatchService/CreateDispatch",
        serde_json::json!({ "room": room, "agentName": agent }),
    )
}

fn delete_dispatch(room: &str, id: &str) -> (&'static str, serde_json::Value) {
    (
        "/twirp/livekit.AgentDispatchService/DeleteDispatch",
        serde_json::json!({ "room": room, "dispatchId": id }),
    )
}

/// Asserts a `resource_exhausted` answer naming `flag`.
fn exhausted(answer: &(u16, serde_json::Value), flag: &str) {
    let (status, body) = answer;
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["code"], "resource_exhausted", "{body}");
    let msg = body["msg"].as_str().unwrap_or_default();
    assert!(msg.contains(flag), "the message names {flag}: {msg}");
}

fn within(counts: Counts, config: &DevServerConfig) {
    assert!(counts.workers <= config.max_workers, "{counts:?}");
    assert!(counts.rooms <= config.max_rooms, "{counts:?}");
    assert!(counts.dispatches <= config.max_dispatches, "{counts:?}");
    assert!(counts.jobs <= config.max_jobs, "{counts:?}");
}

#[actix_rt::test]
async fn a_worker_over_the_workers_cap_is_closed_with_try_again_later() {
    let server = server_with(DevServerConfig {
        max_workers: 2,
        ..Default::default()
    })
    .await;
    let (first, first_id) = worker(&server, "").await;
    let (_second, _) = worker(&server, "").await;

    let mut third = connect(&server).await;
    send(&mut third, register_request("")).await;
    let close = loop {
        match tokio::time::timeout(DEADLINE, third.next()).await {
            Ok(Some(Ok(Frame::Close(reason)))) => break reason.expect("a close reason"),
            Ok(Some(Ok(Frame::Ping(_) | Frame::Pong(_)))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Again, "{close:?}");
    let why = close.description.unwrap_or_default();
    assert!(why.contains("--max-workers"), "{why}");
    assert_eq!(server.counts().await.workers, 2);
    assert_eq!(
        server.workers().await.len(),
        2,
        "the refused one is not kept"
    );

    // the cap is on connected workers: a place frees when one leaves
    drop(first);
    server
        .wait_workers(DEADLINE, |w| {
            w.iter().any(|w| w.id == first_id && !w.connected)
        })
        .await
        .unwrap();
    let (_fourth, _) = worker(&server, "").await;
    assert_eq!(server.counts().await.workers, 2);
}

#[actix_rt::test]
async fn rooms_dispatches_and_participants_answer_resource_exhausted_over_their_caps() {
    let server = server_with(DevServerConfig {
        max_rooms: 2,
        max_dispatches: 3,
        max_participants: 2,
        ..Default::default()
    })
    .await;
    let (a, b, c) = (token_for("a"), token_for("b"), token_for("c"));

    // rooms: two, each with its default dispatch
    let (path, body) = create_room("a");
    assert_eq!(post_json(&server, path, &a, body).await.0, 200);
    let (path, body) = create_room("b");
    assert_eq!(post_json(&server, path, &b, body).await.0, 200);
    let (path, body) = create_room("c");
    exhausted(&post_json(&server, path, &c, body).await, "--max-rooms");
    // a dispatch or a participant for a missing room would create one too
    let (path, body) = create_dispatch("c", "bot");
    exhausted(&post_json(&server, path, &c, body).await, "--max-rooms");
    let joined = post_json(
        &server,
        "/dev/rooms/c/participants",
        &c,
        serde_json::json!({"identity": "x"}),
    )
    .await;
    exhausted(&joined, "--max-rooms");

    // dispatches: two default ones, one more, then none
    let (path, body) = create_dispatch("a", "bot");
    let (status, made) = post_json(&server, path, &a, body).await;
    assert_eq!(status, 200, "{made}");
    let (path, body) = create_dispatch("a", "bot");
    exhausted(
        &post_json(&server, path, &a, body).await,
        "--max-dispatches",
    );
    // a deleted dispatch is forgotten: its place is free again
    let id = made["id"].as_str().unwrap();
    let (path, body) = delete_dispatch("a", id);
    assert_eq!(post_json(&server, path, &a, body).await.0, 200);
    assert_eq!(server.counts().await.dispatches, 2);
    let (path, body) = create_dispatch("a", "bot");
    assert_eq!(post_json(&server, path, &a, body).await.0, 200);

    // participants, per room
    for who in ["alice", "bob"] {
        let body = serde_json::json!({ "identity": who });
        let (status, answer) = post_json(&server, "/dev/rooms/a/participants", &a, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let body = serde_json::json!({"identity": "carol"});
    let answer = post_json(&server, "/dev/rooms/a/participants", &a, body).await;
    exhausted(&answer, "--max-participants");
    let body = serde_json::json!({"identity": "carol"});
    assert_eq!(
        post_json(&server, "/dev/rooms/b/participants", &b, body)
            .await
            .0,
        200,
        "another room has its own places"
    );
    let counts = server.counts().await;
    assert_eq!(
        (counts.rooms, counts.dispatches, counts.participants),
        (2, 3, 3)
    );
}

/// Answers the next availability, reads the assignment; returns the job id.
async fn take_job(conn: &mut Conn) -> String {
    let job = expect_availability(conn).await;
    answer(conn, &job.id, true, "").await;
    let server_message::Message::Assignment(_) = next_msg(conn).await else {
        panic!("no assignment")
    };
    job.id
}

/// Dispatches a job to `conn`'s worker and takes it.
async fn running_job(server: &DevServer, conn: &mut Conn, agent: &str) -> String {
    let dispatch = actix_rt::spawn({
        let server = server.clone();
        let request = DispatchRequest::room("r").agent_name(agent);
        async move { server.dispatch(request).await }
    });
    let id = take_job(conn).await;
    assert_eq!(dispatch.await.unwrap().unwrap().id, id);
    id
}

#[actix_rt::test]
async fn live_jobs_are_never_evicted_and_finished_ones_make_room() {
    let server = server_with(DevServerConfig {
        max_jobs: 2,
        ..Default::default()
    })
    .await;
    let (mut bot, _) = worker(&server, "bot").await;
    let first = running_job(&server, &mut bot, "bot").await;
    let second = running_job(&server, &mut bot, "bot").await;

    // full of live jobs: refused, by the handle and by the Twirp API
    assert_eq!(
        server
            .dispatch(DispatchRequest::room("r").agent_name("bot"))
            .await
            .unwrap_err(),
        DispatchError::TooManyJobs { max_jobs: 2 }
    );
    let (path, body) = create_dispatch("r", "bot");
    exhausted(
        &post_json(&server, path, &token_for("r"), body).await,
        "--max-jobs",
    );
    // refused whole: neither the room nor its dispatch was made
    let counts = server.counts().await;
    assert_eq!((counts.rooms, counts.dispatches, counts.jobs), (0, 0, 2));
    assert!(server.job(&first).await.is_some() && server.job(&second).await.is_some());

    // a finished job stays readable until its place is needed
    update_job(&mut bot, &first, JobStatus::JsSuccess, "").await;
    let done = server
        .wait_job(&first, DEADLINE, |j| j.status == JobStatus::JsSuccess)
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::JsSuccess);
    let third = running_job(&server, &mut bot, "bot").await;
    assert!(
        server.job(&first).await.is_none(),
        "the finished job made room"
    );
    assert!(server.job(&second).await.is_some(), "the live one stays");
    assert!(server.job(&third).await.is_some());
    let counts = server.counts().await;
    assert_eq!((counts.jobs, counts.live_jobs), (2, 2));
}

#[actix_rt::test]
async fn a_job_abandoned_by_its_worker_makes_room() {
    let server = server_with(DevServerConfig {
        max_jobs: 1,
        reconnect_grace: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let (mut gone, _) = worker(&server, "bot").await;
    let abandoned = running_job(&server, &mut gone, "bot").await;
    drop(gone);
    // not claimed within the grace period (JRP_NEVER: no restart)
    server
        .wait_counts(DEADLINE, |c| c.live_jobs == 0)
        .await
        .expect("the job is abandoned");
    assert_eq!(
        server.job(&abandoned).await.unwrap().status,
        JobStatus::JsRunning,
        "left as it was, as the server does"
    );
    let (mut next, _) = worker(&server, "bot").await;
    running_job(&server, &mut next, "bot").await;
    assert!(server.job(&abandoned).await.is_none());
}

#[actix_rt::test]
async fn memory_stays_bounded_under_a_flood_of_creates() {
    let config = DevServerConfig {
        max_rooms: 5,
        max_dispatches: 8,
        max_participants: 3,
        max_jobs: 6,
        ..Default::default()
    };
    let server = server_with(config.clone()).await;
    let tokens: HashMap<String, String> = (0..10)
        .map(|n| format!("room-{n}"))
        .map(|room| (room.clone(), token_for(&room)))
        .collect();
    let mut refused: HashMap<String, usize> = HashMap::new();
    let mut served = 0;
    // dispatches made once the cap had been reached: deletions freed places
    let mut made_when_full = 0;
    let mut made: Vec<(String, String)> = Vec::new();
    for i in 0..2400 {
        let room = format!("room-{}", (i * 7) % 10);
        // two dispatches made for one deleted: the dispatch cap is reached,
        // and deletions keep freeing places under it
        let (room, path, body) = match i % 8 {
            1 | 5 => {
                let (path, body) = create_dispatch(&room, "bot");
                (room, path.to_owned(), body)
            }
            2 => match made.pop() {
                Some((room, id)) => {
                    let (path, body) = delete_dispatch(&room, &id);
                    (room, path.to_owned(), body)
                }
                None => {
                    let (path, body) = create_room(&room);
                    (room, path.to_owned(), body)
                }
            },
            3 | 7 => {
                let path = format!("/dev/rooms/{room}/participants");
                (
                    room,
                    path,
                    serde_json::json!({ "identity": format!("p-{i}") }),
                )
            }
            _ => {
                let (path, body) = create_room(&room);
                (room, path.to_owned(), body)
            }
        };
        let token = &tokens[&room];
        let (status, body) = post_json(&server, &path, token, body).await;
        match status {
            200 => {
                served += 1;
                if path.ends_with("/CreateDispatch") {
                    made.push((room.clone(), body["id"].as_str().unwrap().to_owned()));
                    if refused.contains_key("max-dispatches") {
                        made_when_full += 1;
                    }
                }
            }
            429 => {
                let msg = body["msg"].as_str().unwrap_or_default();
                let flag = msg.rsplit("(--").next().unwrap_or_default();
                *refused
                    .entry(flag.trim_end_matches(')').to_owned())
                    .or_default() += 1;
            }
            _ => panic!("{path}: unexpected {status} {body}"),
        }
        within(server.counts().await, &config);
    }
    assert!(served > 0);
    assert!(made_when_full > 0, "deleted dispatches are forgotten");
    for cap in ["max-rooms", "max-dispatches", "max-participants"] {
        assert!(
            refused.get(cap).is_some_and(|n| *n > 0),
            "{cap}: {refused:?}"
        );
    }

    // jobs: a thousand, each finished by its worker; the records stay bounded
    // and the latest finished job can still be read
    let (mut bot, _) = worker(&server, "bot").await;
    let mut last = String::new();
    for _ in 0..1000 {
        last = running_job(&server, &mut bot, "bot").await;
        update_job(&mut bot, &last, JobStatus::JsSuccess, "").await;
        server
            .wait_job(&last, DEADLINE, |j| j.status == JobStatus::JsSuccess)
            .await
            .unwrap();
        within(server.counts().await, &config);
    }
    assert_eq!(server.counts().await.jobs, config.max_jobs);
    assert!(server.job(&last).await.is_some());
}
