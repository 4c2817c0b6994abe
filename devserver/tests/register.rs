//! The register handshake, keepalive, and the frame rules.

mod common;

use std::time::Duration;

use awc::ws::Message;
use common::*;
use futures_util::SinkExt;
use livekit_protocol::{WorkerPing, server_message, worker_message};
use lkagent_devserver::DevServerConfig;

#[actix_rt::test]
async fn register_answers_worker_id_and_server_info() {
    let server = server().await;
    let mut conn = connect(&server).await;
    send(&mut conn, register_request("bot")).await;
    let server_message::Message::Register(answer) = next_msg(&mut conn).await else {
        panic!("not register")
    };
    assert!(answer.worker_id.starts_with("AW_"), "{}", answer.worker_id);
    let info = answer.server_info.expect("server_info");
    assert_eq!(info.agent_protocol, 1);
    assert!(!info.version.is_empty() && !info.node_id.is_empty());

    let workers = server
        .wait_workers(DEADLINE, |w| w.iter().any(|w| w.id == answer.worker_id))
        .await
        .unwrap();
    let w = &workers[0];
    assert_eq!(
        (w.agent_name.as_str(), w.version.as_str(), w.connected),
        ("bot", "test-1", true)
    );
    assert_eq!(w.load, 0.0);
}

#[actix_rt::test]
async fn a_reconnect_gets_a_new_worker_id() {
    let server = server().await;
    let (conn, first) = worker(&server, "").await;
    drop(conn);
    let (_conn, second) = worker(&server, "").await;
    assert_ne!(first, second);
}

#[actix_rt::test]
async fn no_register_in_time_closes() {
    let server = server_with(DevServerConfig {
        register_timeout: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let mut conn = connect(&server).await;
    assert!(closed(&mut conn).await);
}

#[actix_rt::test]
async fn ping_before_register_is_answered_then_a_non_register_closes() {
    let server = server().await;
    let mut conn = connect(&server).await;
    send(
        &mut conn,
        worker_message::Message::Ping(WorkerPing { timestamp: 42 }),
    )
    .await;
    let server_message::Message::Pong(pong) = next_msg(&mut conn).await else {
        panic!("not pong")
    };
    assert_eq!(pong.last_timestamp, 42);
    assert!(
        pong.timestamp > 1_600_000_000_000,
        "timestamp in ms: {}",
        pong.timestamp
    );

    send(
        &mut conn,
        worker_message::Message::UpdateJob(Default::default()),
    )
    .await;
    assert!(closed(&mut conn).await);
}

#[actix_rt::test]
async fn an_empty_message_closes() {
    let server = server().await;
    let mut conn = connect(&server).await;
    conn.send(Message::Binary(Vec::new().into())).await.unwrap();
    assert!(closed(&mut conn).await);
}

#[actix_rt::test]
async fn a_second_register_closes() {
    let server = server().await;
    let (mut conn, _) = worker(&server, "").await;
    send(&mut conn, register_request("")).await;
    assert!(closed(&mut conn).await);
}

#[actix_rt::test]
async fn an_undecodable_frame_closes() {
    let server = server().await;
    let (mut conn, _) = worker(&server, "").await;
    conn.send(Message::Binary(vec![0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    assert!(closed(&mut conn).await);
}

#[actix_rt::test]
async fn an_oversized_frame_closes() {
    let server = server_with(DevServerConfig {
        max_frame_size: 1024,
        ..Default::default()
    })
    .await;
    let (mut conn, _) = worker(&server, "").await;
    conn.send(Message::Binary(vec![0u8; 2048].into()))
        .await
        .unwrap();
    assert!(closed(&mut conn).await);
}

#[actix_rt::test]
async fn websocket_pings_are_sent() {
    let server = server_with(DevServerConfig {
        ping_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let (mut conn, _) = worker(&server, "").await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        use futures_util::StreamExt;
        let frame = tokio::time::timeout_at(deadline, conn.next())
            .await
            .expect("a ping in time");
        if let Some(Ok(awc::ws::Frame::Ping(_))) = frame {
            break;
        }
    }
}

#[actix_rt::test]
async fn text_frames_get_text_answers() {
    let server = server().await;
    let mut conn = connect(&server).await;
    let register = livekit_protocol::WorkerMessage {
        message: Some(register_request("json")),
    };
    conn.send(Message::Text(
        serde_json::to_string(&register).unwrap().into(),
    ))
    .await
    .unwrap();
    // next_event decodes text frames as protojson
    match next_event(&mut conn).await {
        Event::Msg(server_message::Message::Register(r)) => assert!(r.worker_id.starts_with("AW_")),
        other => panic!("expected a JSON register answer, got {other:?}"),
    }
}

#[actix_rt::test]
async fn update_worker_is_counted_and_applied() {
    let server = server().await;
    let (mut conn, id) = worker(&server, "").await;
    let update = |status: Option<i32>, load: f32, seq: u64| {
        worker_message::Message::UpdateWorker(livekit_protocol::UpdateWorkerStatus {
            status,
            load,
            job_count: 2,
            seq,
            ..Default::default()
        })
    };
    send(
        &mut conn,
        update(Some(livekit_protocol::WorkerStatus::WsFull as i32), 0.9, 1),
    )
    .await;
    send(&mut conn, update(None, 0.4, 2)).await;
    let workers = server
        .wait_workers(DEADLINE, |w| w.iter().any(|w| w.update_count == 2))
        .await
        .unwrap();
    let w = workers.iter().find(|w| w.id == id).unwrap();
    assert_eq!(
        w.status,
        livekit_protocol::WorkerStatus::WsFull,
        "absent status keeps the last one"
    );
    assert_eq!(w.load, 0.4);
    assert_eq!(w.job_count, 2);
    assert_eq!(w.last_update.as_ref().unwrap().seq, 2);
}
