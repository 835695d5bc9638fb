//! The spool: objects kept through an S3 outage, drained behind direct uploads when it ends,
//! kept across a restart, and damaged files set aside.

use std::time::{Duration, Instant};

use super::*;

#[tokio::test]
async fn objects_spooled_during_an_outage_reach_s3_when_it_returns() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = dead_addr();
    let storage = open(&pointing_at(addr), &dir.path().join("coordinator")).await;

    let body = Bytes::from_static(b"result during the outage");
    let stored = storage
        .put("jobs/outage/a", body.clone(), "text/plain")
        .await
        .expect("put while S3 is down");
    assert!(stored.spooled);
    assert_eq!(stored.sha256, sha256_hex(&body));
    let stats = storage.spool();
    assert_eq!((stats.objects, stats.bytes), (1, body.len() as u64));
    assert!(stats.oldest_ms.is_some());
    assert_eq!(
        storage.get("jobs/outage/a").await.expect("get"),
        Some(body.clone())
    );
    assert_eq!(
        storage.head("jobs/outage/a").await.expect("head"),
        Some(body.len() as u64)
    );
    let started = Instant::now();
    let second = storage
        .put("jobs/outage/b", Bytes::from_static(b"b"), "text/plain")
        .await
        .expect("put");
    assert!(second.spooled);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "an open breaker spools without trying S3"
    );

    let server_config = StorageConfig {
        endpoint: None,
        embedded_listen: addr,
        ..pointing_at(addr)
    };
    let s3 = open(&server_config, &dir.path().join("s3")).await;
    eventually("the spool is drained", || storage.spool().objects == 0).await;
    assert_eq!(s3.get("jobs/outage/a").await.expect("get"), Some(body));
    assert_eq!(
        s3.get("jobs/outage/b").await.expect("get"),
        Some(Bytes::from_static(b"b"))
    );
    let core = &storage.inner.core;
    eventually("the breaker closes", || {
        !core.breaker_open.load(Ordering::Acquire)
    })
    .await;
    let after = storage
        .put("jobs/outage/c", Bytes::from_static(b"c"), "text/plain")
        .await
        .expect("put");
    assert!(!after.spooled);
    assert_eq!(s3.head("jobs/outage/c").await.expect("head"), Some(1));
    storage.shutdown().await;
    s3.shutdown().await;
}

/// Once S3 works again, new keys go to it directly while the backlog drains; a key with a
/// write still spooled queues behind it, so it ends with its newest body.
#[tokio::test]
async fn while_a_backlog_drains_new_keys_go_direct_and_spooled_keys_queue() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = dead_addr();
    let server_config = StorageConfig {
        endpoint: None,
        embedded_listen: addr,
        ..pointing_at(addr)
    };
    let s3 = open(&server_config, &dir.path().join("s3")).await;
    let storage = open(&pointing_at(addr), &dir.path().join("coordinator")).await;
    let core = &storage.inner.core;
    // A backlog the drainer has not been woken for yet.
    core.spool
        .write(
            "jobs/backlog/x",
            "text/plain",
            &sha256_hex(b"x1"),
            Bytes::from_static(b"x1"),
        )
        .await
        .expect("spool");
    let fresh = storage
        .put("jobs/backlog/y", Bytes::from_static(b"y"), "text/plain")
        .await
        .expect("put");
    assert!(
        !fresh.spooled,
        "a key with nothing spooled goes to S3 directly"
    );
    assert_eq!(s3.head("jobs/backlog/y").await.expect("head"), Some(1));
    let queued = storage
        .put("jobs/backlog/x", Bytes::from_static(b"x2"), "text/plain")
        .await
        .expect("put");
    assert!(
        queued.spooled,
        "a key with a spooled write queues behind it"
    );
    eventually("the spool is drained", || storage.spool().objects == 0).await;
    assert_eq!(
        s3.get("jobs/backlog/x").await.expect("get"),
        Some(Bytes::from_static(b"x2")),
        "the newest body lands last"
    );
    storage.shutdown().await;
    s3.shutdown().await;
}

#[tokio::test]
async fn a_restarted_storage_uploads_what_the_previous_run_spooled() {
    with_each_target(|target| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool_dir = dir.path().join("spool");
        let down = StorageConfig {
            spool_dir: Some(spool_dir.clone()),
            ..pointing_at(dead_addr())
        };
        let first = open(&down, &dir.path().join("first")).await;
        for (key, body) in [("jobs/r/x", "x1"), ("jobs/r/y", "y"), ("jobs/r/x", "x2")] {
            let stored = first
                .put(key, Bytes::from(body), "text/plain")
                .await
                .expect("put");
            assert!(stored.spooled);
        }
        assert_eq!(
            first.get("jobs/r/x").await.expect("get"),
            Some(Bytes::from_static(b"x2")),
            "the newest spooled version wins"
        );
        first.shutdown().await;
        drop(first);
        // What a crash in the middle of spooling leaves behind.
        std::fs::write(spool_dir.join("00000000000000000099.part"), b"half").expect("write");

        let up = StorageConfig {
            spool_dir: Some(spool_dir.clone()),
            ..target.config()
        };
        let second = open(&up, &dir.path().join("second")).await;
        eventually("the spool is drained", || second.spool().objects == 0).await;
        assert_eq!(
            second.get("jobs/r/x").await.expect("get"),
            Some(Bytes::from_static(b"x2"))
        );
        assert_eq!(
            second.get("jobs/r/y").await.expect("get"),
            Some(Bytes::from_static(b"y"))
        );
        let left: Vec<_> = std::fs::read_dir(&spool_dir)
            .expect("list spool")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        second.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn damaged_spool_files_are_moved_aside_not_uploaded() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(&spool_dir).expect("mkdir");
    std::fs::write(spool_dir.join("00000000000000000001.obj"), b"garbage").expect("write");
    let config = StorageConfig {
        spool_dir: Some(spool_dir.clone()),
        ..fast()
    };
    let storage = open(&config, dir.path()).await;
    assert_eq!(storage.spool(), SpoolStats::default());
    let damaged = std::fs::read_dir(spool_dir.join("damaged"))
        .expect("damaged dir")
        .count();
    assert_eq!(damaged, 1);
    storage.shutdown().await;
}
