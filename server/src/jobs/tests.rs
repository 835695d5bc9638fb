use infermine_protocol::SyntheticParams;

use super::*;
use crate::config::Config;

/// Regression: a job the database holds as queued but the dispatcher never heard of (a
/// write whose reply was lost) is offered again, once.
#[tokio::test]
async fn queued_jobs_the_dispatcher_lost_are_offered_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::connect(&Config::with_data_dir(dir.path()).database_url())
        .await
        .expect("db");
    db.migrate().await.expect("migrate");
    let (dispatcher, inbox) = Dispatcher::channel();
    let limits = Limits {
        max_attempts: 3,
        lease_grace: Duration::from_secs(1),
        max_wait: Duration::from_secs(1),
    };
    let jobs = Jobs::new(
        db.clone(),
        Arc::new(Registry::builtin()),
        dispatcher.clone(),
        limits,
        Arc::new(PointsConfig::default()),
        Storage::open(&Default::default(), dir.path())
            .await
            .expect("storage"),
        crate::cluster::Cluster::single(Default::default()),
    );
    tokio::spawn(crate::dispatch::run(inbox, Arc::clone(&jobs)));

    let params = JobParams::Synthetic(SyntheticParams {
        output_bytes: 1,
        delay_ms: 0,
        stream_tokens: 0,
        seed: 0,
        fail: false,
    });
    let forgotten = store::NewJob {
        id: uuid::Uuid::now_v7(),
        model: "synthetic-echo".to_owned(),
        kind: "synthetic",
        params: serde_json::to_string(&params).expect("json"),
        api_key_id: Some(uuid::Uuid::now_v7()),
        created_ms: now_ms() - 60_000,
        purpose: store::Purpose::Consumer,
        review_of: None,
        streamed: false,
    };
    store::insert_many(&db, std::slice::from_ref(&forgotten))
        .await
        .expect("insert");
    assert_eq!(dispatcher.snapshot().await.queued, 0);

    assert_eq!(jobs.reoffer_queued().await.expect("reoffer"), 1);
    assert_eq!(
        jobs.reoffer_queued().await.expect("reoffer"),
        1,
        "still queued in the database"
    );
    assert_eq!(
        dispatcher.snapshot().await.queued,
        1,
        "offered twice, queued once"
    );
}
