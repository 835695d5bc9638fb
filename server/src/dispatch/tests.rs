//! The dispatcher's scheduling rules, driven through its handle with a sink that records
//! what it decided.
use infermine_protocol::SyntheticParams;

use super::*;

/// Records what the dispatcher decided.
#[derive(Debug)]
enum Decision {
    Assign(JobId, SessionId, u32),
    Lost(JobId, SessionId, LostReason),
}

struct RecordingSink(mpsc::UnboundedSender<Decision>);

impl AssignSink for RecordingSink {
    fn assign(&self, a: Assignment) {
        let _ = self
            .0
            .send(Decision::Assign(a.job.id, a.session, a.gpu_index));
    }
    fn lost(&self, job: JobId, session: SessionId, reason: LostReason) {
        let _ = self.0.send(Decision::Lost(job, session, reason));
    }
}

fn start() -> (Dispatcher, mpsc::UnboundedReceiver<Decision>) {
    let (dispatcher, inbox) = Dispatcher::channel();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(inbox, RecordingSink(tx)));
    (dispatcher, rx)
}

fn job(model: &str, lease_ms: u64) -> QueuedJob {
    QueuedJob {
        id: Uuid::now_v7(),
        model: model.to_owned(),
        params: Arc::new(JobParams::Synthetic(SyntheticParams {
            output_bytes: 1,
            delay_ms: 0,
            stream_tokens: 0,
            seed: 0,
            fail: false,
        })),
        lease: Duration::from_millis(lease_ms),
        created_ms: 0,
        validators_only: false,
        streamed: false,
    }
}

fn agent(
    dispatcher: &Dispatcher,
    models: &[&str],
    gpus: u32,
) -> (SessionId, mpsc::Receiver<Outbound>) {
    join(dispatcher, models, gpus, false)
}

fn join(
    dispatcher: &Dispatcher,
    models: &[&str],
    gpus: u32,
    validator: bool,
) -> (SessionId, mpsc::Receiver<Outbound>) {
    let session = Uuid::now_v7();
    let (tx, rx) = mpsc::channel(16);
    let slots = (0..gpus)
        .map(|gpu_index| SlotSpec {
            gpu_index,
            miner_id: format!("m-gpu{gpu_index}"),
            models: models.iter().map(|m| ((*m).to_owned(), 1)).collect(),
            validator,
            probation: None,
        })
        .collect();
    dispatcher.agent_joined(session, tx, slots);
    (session, rx)
}

/// One GPU (`m-gpu0`, running up to `concurrency` jobs at once) on probation.
fn on_probation(
    dispatcher: &Dispatcher,
    concurrency: u32,
    probation: Probation,
) -> (SessionId, mpsc::Receiver<Outbound>) {
    let session = Uuid::now_v7();
    let (tx, rx) = mpsc::channel(16);
    let slot = SlotSpec {
        gpu_index: 0,
        miner_id: "m-gpu0".to_owned(),
        models: vec![("m".to_owned(), concurrency)],
        validator: false,
        probation: Some(probation),
    };
    dispatcher.agent_joined(session, tx, vec![slot]);
    (session, rx)
}

/// Assignments made so far, without waiting for more.
async fn assigned_now(decisions: &mut mpsc::UnboundedReceiver<Decision>) -> Vec<JobId> {
    let mut ids = vec![];
    while let Ok(decision) = decisions.try_recv() {
        if let Decision::Assign(id, ..) = decision {
            ids.push(id);
        }
    }
    ids
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Decision>) -> Decision {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a decision")
        .expect("open")
}

#[tokio::test]
async fn jobs_wait_for_a_slot_with_their_model_and_go_oldest_first() {
    let (dispatcher, mut decisions) = start();
    let (first, second, other) = (job("a", 60_000), job("a", 60_000), job("b", 60_000));
    for queued in [&first, &second, &other] {
        dispatcher.enqueue(queued.clone());
    }
    assert_eq!(dispatcher.snapshot().await.queued, 3);
    let (session, _rx) = agent(&dispatcher, &["a"], 1);
    let Decision::Assign(id, s, 0) = next(&mut decisions).await else {
        panic!("not assigned")
    };
    assert_eq!(
        (id, s),
        (first.id, session),
        "oldest job of the slot's model first"
    );
    assert_eq!(
        dispatcher.snapshot().await,
        Snapshot {
            agents: 1,
            slots: 1,
            queued: 2,
            leased: 1,
            queued_by_model: [("a".to_owned(), 1), ("b".to_owned(), 1)].into(),
        }
    );

    dispatcher.finished(first.id, session, Some(Duration::from_millis(5)));
    let Decision::Assign(id, _, _) = next(&mut decisions).await else {
        panic!("not assigned")
    };
    assert_eq!(id, second.id, "model b never goes to a slot without it");
}

#[tokio::test]
async fn a_job_offered_twice_is_queued_once() {
    let (dispatcher, _decisions) = start();
    let queued = job("m", 60_000);
    dispatcher.enqueue(queued.clone());
    dispatcher.enqueue(queued);
    assert_eq!(dispatcher.snapshot().await.queued, 1);
}

#[tokio::test]
async fn ties_go_to_the_slot_with_the_lowest_recent_latency() {
    let (dispatcher, mut decisions) = start();
    let (_slow, _a) = agent(&dispatcher, &["m"], 1);
    let (fast, _b) = agent(&dispatcher, &["m"], 1);
    // One job each (a slot runs one at a time); the fast slot answers in 10 ms.
    for _ in 0..2 {
        dispatcher.enqueue(job("m", 60_000));
    }
    for _ in 0..2 {
        let Decision::Assign(id, s, _) = next(&mut decisions).await else {
            panic!("not assigned")
        };
        let latency = if s == fast { 10 } else { 900 };
        dispatcher.finished(id, s, Some(Duration::from_millis(latency)));
    }
    for _ in 0..3 {
        let queued = job("m", 60_000);
        dispatcher.enqueue(queued.clone());
        let Decision::Assign(_, s, _) = next(&mut decisions).await else {
            panic!()
        };
        assert_eq!(s, fast, "the faster slot wins while it is idle");
        dispatcher.finished(queued.id, s, Some(Duration::from_millis(10)));
    }
}

#[tokio::test]
async fn a_departed_agent_loses_its_leases_and_its_slots() {
    let (dispatcher, mut decisions) = start();
    let (session, _rx) = agent(&dispatcher, &["m"], 2);
    let (a, b) = (job("m", 60_000), job("m", 60_000));
    dispatcher.enqueue(a.clone());
    dispatcher.enqueue(b.clone());
    next(&mut decisions).await;
    next(&mut decisions).await;
    dispatcher.agent_left(session);
    let mut lost = vec![];
    for _ in 0..2 {
        let Decision::Lost(id, s, LostReason::AgentDisconnected) = next(&mut decisions).await
        else {
            panic!()
        };
        assert_eq!(s, session);
        lost.push(id);
    }
    lost.sort();
    let mut expected = vec![a.id, b.id];
    expected.sort();
    assert_eq!(lost, expected);
    assert_eq!(dispatcher.snapshot().await, Snapshot::default());
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_lost_and_its_agent_told_to_stop() {
    let (dispatcher, mut decisions) = start();
    let (session, mut frames) = agent(&dispatcher, &["m"], 1);
    let queued = job("m", 1_000);
    dispatcher.enqueue(queued.clone());
    next(&mut decisions).await;
    tokio::time::advance(Duration::from_millis(1_001)).await;
    let Decision::Lost(id, s, LostReason::LeaseExpired) = next(&mut decisions).await else {
        panic!()
    };
    assert_eq!((id, s), (queued.id, session));
    let Some(Outbound::Frame(CoordinatorMessage::Cancel { job })) = frames.recv().await else {
        panic!()
    };
    assert_eq!(job, queued.id);
    // A result arriving after expiry frees nothing twice.
    dispatcher.finished(queued.id, session, None);
    assert_eq!(dispatcher.snapshot().await.leased, 0);
}

#[tokio::test]
async fn cancelling_a_queued_job_removes_it_and_draining_stops_assignment() {
    let (dispatcher, mut decisions) = start();
    let (cancelled, kept) = (job("m", 60_000), job("m", 60_000));
    dispatcher.enqueue(cancelled.clone());
    dispatcher.enqueue(kept.clone());
    dispatcher.cancel(cancelled.id);
    dispatcher.drain();
    let (_session, _rx) = agent(&dispatcher, &["m"], 1);
    assert_eq!(dispatcher.snapshot().await.queued, 1);
    assert!(
        decisions.try_recv().is_err(),
        "nothing is assigned while draining"
    );
}

#[tokio::test]
async fn serving_counts_the_slots_that_may_run_a_model_busy_or_not() {
    let (dispatcher, mut decisions) = start();
    assert_eq!(dispatcher.serving("a").await, 0);
    let (session, _frames) = agent(&dispatcher, &["a", "b"], 2);
    let _other = agent(&dispatcher, &["b"], 1);
    dispatcher.enqueue(job("a", 60_000));
    assert!(matches!(next(&mut decisions).await, Decision::Assign(_, s, _) if s == session));
    assert_eq!(dispatcher.serving("a").await, 2, "a busy slot still serves");
    assert_eq!(dispatcher.serving("b").await, 3);
    dispatcher.agent_left(session);
    assert_eq!(dispatcher.serving("a").await, 0);
}

#[tokio::test]
async fn review_jobs_go_only_to_validators_which_also_take_open_work() {
    let (dispatcher, mut decisions) = start();
    let review = QueuedJob {
        validators_only: true,
        ..job("a", 60_000)
    };
    dispatcher.enqueue(review.clone());
    let (_miner, _rx) = agent(&dispatcher, &["a"], 1);
    let open = job("a", 60_000);
    dispatcher.enqueue(open.clone());
    let Decision::Assign(id, _, _) = next(&mut decisions).await else {
        panic!("not assigned")
    };
    assert_eq!(id, open.id, "an ordinary slot skips the review job");
    assert_eq!(dispatcher.snapshot().await.queued, 1);
    assert_eq!(dispatcher.validators_serving("a").await, 0);
    assert_eq!(dispatcher.serving("a").await, 1);

    let (validator, _vrx) = join(&dispatcher, &["a"], 1, true);
    let Decision::Assign(id, session, _) = next(&mut decisions).await else {
        panic!("not assigned")
    };
    assert_eq!((id, session), (review.id, validator));
    assert_eq!(dispatcher.validators_serving("a").await, 1);

    dispatcher.finished(review.id, validator, None);
    let later = job("a", 60_000);
    dispatcher.enqueue(later.clone());
    let Decision::Assign(id, session, _) = next(&mut decisions).await else {
        panic!("not assigned")
    };
    assert_eq!(
        (id, session),
        (later.id, validator),
        "the idle validator takes open work"
    );
}

#[tokio::test]
async fn a_gpu_on_probation_starts_work_only_as_its_results_are_reviewed() {
    let (dispatcher, mut decisions) = start();
    // Up to 4 jobs at once, but on probation with a limit of 3, one of them still unreviewed
    // from an earlier session: 2 may start.
    let (session, _rx) = on_probation(
        &dispatcher,
        4,
        Probation {
            limit: 3,
            unsettled: 1,
        },
    );
    let jobs: Vec<QueuedJob> = (0..5).map(|_| job("m", 60_000)).collect();
    for queued in &jobs {
        dispatcher.enqueue(queued.clone());
    }
    dispatcher.snapshot().await;
    assert_eq!(assigned_now(&mut decisions).await, [jobs[0].id, jobs[1].id]);

    // A result awaits review: nothing new starts. A job that ended without a result gives
    // its place back.
    dispatcher.finished(jobs[0].id, session, Some(Duration::from_millis(5)));
    dispatcher.snapshot().await;
    assert!(assigned_now(&mut decisions).await.is_empty());
    dispatcher.finished(jobs[1].id, session, None);
    dispatcher.snapshot().await;
    assert_eq!(assigned_now(&mut decisions).await, [jobs[2].id]);

    // Each review grants one more; granting never exceeds the limit.
    dispatcher.grant("m-gpu0");
    dispatcher.snapshot().await;
    assert_eq!(assigned_now(&mut decisions).await, [jobs[3].id]);
    for _ in 0..5 {
        dispatcher.grant("m-gpu0");
    }
    dispatcher.snapshot().await;
    assert_eq!(
        assigned_now(&mut decisions).await,
        [jobs[4].id],
        "two running: one more fits under the limit of 3"
    );
    let more: Vec<QueuedJob> = (0..3).map(|_| job("m", 60_000)).collect();
    for queued in &more {
        dispatcher.enqueue(queued.clone());
    }
    dispatcher.snapshot().await;
    assert!(assigned_now(&mut decisions).await.is_empty());

    // Lifted, the GPU runs at its own concurrency again.
    dispatcher.lift("m-gpu0");
    dispatcher.snapshot().await;
    assert_eq!(assigned_now(&mut decisions).await, [more[0].id]);
    assert_eq!(dispatcher.snapshot().await.leased, 4);

    // Restricted again (a failed check), it waits until its running jobs are reviewed.
    dispatcher.restrict(
        "m-gpu0",
        Probation {
            limit: 2,
            unsettled: 0,
        },
    );
    for id in [jobs[2].id, jobs[3].id, jobs[4].id] {
        dispatcher.finished(id, session, Some(Duration::from_millis(5)));
    }
    dispatcher.snapshot().await;
    assert!(assigned_now(&mut decisions).await.is_empty());
    dispatcher.grant("m-gpu0");
    dispatcher.snapshot().await;
    assert_eq!(assigned_now(&mut decisions).await, [more[1].id]);
}

#[tokio::test]
async fn probation_never_holds_back_review_work_on_a_validator() {
    let (dispatcher, mut decisions) = start();
    let session = Uuid::now_v7();
    let (tx, _rx) = mpsc::channel(16);
    let slot = SlotSpec {
        gpu_index: 0,
        miner_id: "v-gpu0".to_owned(),
        models: vec![("m".to_owned(), 1)],
        validator: true,
        probation: Some(Probation {
            limit: 1,
            unsettled: 1,
        }),
    };
    dispatcher.agent_joined(session, tx, vec![slot]);
    let open = job("m", 60_000);
    dispatcher.enqueue(open.clone());
    let Decision::Assign(id, ..) = next(&mut decisions).await else {
        panic!("not assigned")
    };
    assert_eq!(id, open.id, "validators are never on probation");
}
