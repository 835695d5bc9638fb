//! The bookkeeping of challenges: who may answer, when a challenge can be judged, and what
//! happens to one left unanswered.
use uuid::Uuid;

use super::*;

fn ask() -> Ask {
    Ask {
        model: "m".to_owned(),
        file: "unet/diffusion_pytorch_model.safetensors".to_owned(),
        offset: 0,
        len: 100,
    }
}

fn open(session: SessionId, expected: Expected, sent_ms: i64) -> Open {
    Open {
        session,
        miner_id: "w-rig-gpu0".to_owned(),
        wallet: "w".to_owned(),
        ask: ask(),
        sent_ms,
        expected,
        answer: None,
    }
}

fn against_validator() -> Expected {
    Expected::Validator {
        id: 0,
        miner_id: "v-gpu0".to_owned(),
        answer: None,
    }
}

#[test]
fn a_pinned_challenge_is_judged_on_the_miners_answer_alone() {
    let challenges = Challenges::default();
    let session = Uuid::now_v7();
    let (id, none) = challenges.register(open(session, Expected::Pinned("AB12".into()), 0), None);
    assert_eq!(none, None);
    // Another session cannot answer for it.
    assert!(
        challenges
            .answer(Uuid::now_v7(), id, Ok("ab12".into()))
            .is_none()
    );
    let (_, outcome) = challenges
        .answer(session, id, Ok("ab12".into()))
        .expect("judged");
    assert_eq!(outcome, Outcome::Passed, "hex compares case-insensitively");
    assert_eq!(challenges.counts().open, 0);

    let (id, _) = challenges.register(open(session, Expected::Pinned("ab12".into()), 0), None);
    let (_, outcome) = challenges
        .answer(session, id, Ok("ffff".into()))
        .expect("judged");
    assert!(matches!(outcome, Outcome::Failed(ref why) if why.contains("differs")));

    let (id, _) = challenges.register(open(session, Expected::Pinned("ab12".into()), 0), None);
    let (_, outcome) = challenges
        .answer(session, id, Err("cannot read".into()))
        .expect("judged");
    assert!(matches!(outcome, Outcome::Failed(ref why) if why.contains("cannot read")));
}

#[test]
fn a_range_challenge_waits_for_both_answers_in_either_order() {
    let challenges = Challenges::default();
    let (miner, validator) = (Uuid::now_v7(), Uuid::now_v7());
    let (id, vid) = challenges.register(open(miner, against_validator(), 0), Some(validator));
    let vid = vid.expect("a validator challenge");
    assert!(challenges.answer(miner, id, Ok("aa".into())).is_none());
    assert!(
        challenges.answer(miner, vid, Ok("aa".into())).is_none(),
        "the miner cannot answer the validator's challenge"
    );
    let (_, outcome) = challenges
        .answer(validator, vid, Ok("aa".into()))
        .expect("judged");
    assert_eq!(outcome, Outcome::Passed);

    let (id, vid) = challenges.register(open(miner, against_validator(), 0), Some(validator));
    let vid = vid.expect("a validator challenge");
    assert!(challenges.answer(validator, vid, Ok("aa".into())).is_none());
    let (judged, outcome) = challenges
        .answer(miner, id, Ok("bb".into()))
        .expect("judged");
    assert!(matches!(outcome, Outcome::Failed(_)));
    assert!(matches!(
        judged.expected,
        Expected::Validator { answer: Some(Ok(ref h)), .. } if h == "aa"
    ));

    // A validator that cannot answer leaves nothing to judge against.
    let (id, vid) = challenges.register(open(miner, against_validator(), 0), Some(validator));
    challenges.answer(miner, id, Ok("aa".into()));
    let (_, outcome) = challenges
        .answer(validator, vid.expect("vid"), Err("busy".into()))
        .expect("judged");
    assert!(matches!(outcome, Outcome::Unverifiable(_)));
    assert_eq!(challenges.counts().open, 0);
}

#[test]
fn an_unanswered_challenge_fails_only_while_its_agent_is_still_connected() {
    let challenges = Challenges::default();
    let (here, gone) = (Uuid::now_v7(), Uuid::now_v7());
    challenges.register(open(here, Expected::Pinned("aa".into()), 0), None);
    challenges.register(open(gone, Expected::Pinned("aa".into()), 0), None);
    let fresh = challenges.register(open(here, Expected::Pinned("aa".into()), 100_000), None);
    let online = |_: &str, session: SessionId| session == here;
    let ended = challenges.expire(ANSWER_WITHIN_MS + 1, online);
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].0.session, here);
    assert!(matches!(ended[0].1, Outcome::Failed(ref why) if why.contains("no answer")));
    assert_eq!(challenges.counts().open, 1, "the fresh one still waits");
    let (_, outcome) = challenges
        .answer(here, fresh.0, Ok("aa".into()))
        .expect("judged");
    assert_eq!(outcome, Outcome::Passed);
}
