//! The store contract suite: every backend runs every scenario here through
//! `contract_tests!`. A new backend passes all of them or is not done.
//!
//! Each scenario takes a fresh, empty store and drives time by hand.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::Timestamp;
use crate::job::JobState;

const T0: Timestamp = Timestamp(1_700_000_000_000_000);
const SECOND: Duration = Duration::from_secs(1);

fn new_job(job_type: &str, key: Option<&str>) -> NewJob {
    NewJob {
        job_type: job_type.into(),
        payload: r#"{"userId":42}"#.into(),
        idempotency_key: key.map(Into::into),
        max_attempts: 3,
        run_at: T0,
        priority: 0,
        timeout_ms: None,
    }
}

async fn insert(s: &dyn Store, job: NewJob) -> JobId {
    match s.job_insert(job, T0).await.unwrap() {
        Enqueued::Created { id, .. } => id,
        other => panic!("expected a new job, got {other:?}"),
    }
}

fn claim_req(job_type: &str, limit: usize, token: i64, now: Timestamp) -> ClaimRequest {
    ClaimRequest {
        job_type: job_type.into(),
        limit,
        owner: format!("test-{token}"),
        token,
        plugin_digest: "sha256:test".into(),
        now,
        lease_expires_at: now.plus(30 * SECOND),
    }
}

fn completion(job: &ClaimedJob, outcome: Outcome, now: Timestamp) -> Completion {
    Completion {
        id: job.id,
        token: job.token,
        owner: "test".into(),
        outcome,
        plugin_digest: "sha256:test".into(),
        started_at: now,
        now,
    }
}

fn moved_ids(moved: &[Moved]) -> Vec<JobId> {
    moved.iter().map(|m| m.id).collect()
}

async fn state(s: &dyn Store, id: JobId) -> JobState {
    s.job_get(id).await.unwrap().expect("job exists").state
}

async fn transitions(s: &dyn Store, id: JobId) -> Vec<(Option<JobState>, JobState)> {
    s.job_events(id)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.from, e.to))
        .collect()
}

pub async fn insert_then_get(s: &dyn Store) {
    let id = insert(s, new_job("email", None)).await;
    let job = s.job_get(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!((job.attempt, job.max_attempts), (0, 3));
    assert_eq!(job.payload, r#"{"userId":42}"#);
    assert_eq!(job.created_at, T0);
    assert_eq!(transitions(s, id).await, vec![(None, JobState::Queued)]);
    assert!(s.job_get(id + 1000).await.unwrap().is_none());
    let (shown, events) = s.job_show(id).await.unwrap().expect("job exists");
    assert_eq!(shown, job);
    assert_eq!(events, s.job_events(id).await.unwrap());
    assert!(s.job_show(id + 1000).await.unwrap().is_none());
}

pub async fn idempotency_key_names_one_job_per_type(s: &dyn Store) {
    let first = insert(s, new_job("email", Some("k1"))).await;
    let again = s
        .job_insert(new_job("email", Some("k1")), T0)
        .await
        .unwrap();
    assert_eq!(
        again,
        Enqueued::Existing {
            id: first,
            state: JobState::Queued
        }
    );
    // The same key under another type is another job.
    let other = insert(s, new_job("sms", Some("k1"))).await;
    assert_ne!(other, first);
    // No key: every submission is a job.
    let a = insert(s, new_job("email", None)).await;
    let b = insert(s, new_job("email", None)).await;
    assert_ne!(a, b);
    assert_eq!(s.counts().await.unwrap().queued, 4);
    // The duplicate wrote no event.
    assert_eq!(transitions(s, first).await.len(), 1);
}

pub async fn batch_insert_creates_all_in_order(s: &dyn Store) {
    let existing = insert(s, new_job("email", Some("old"))).await;
    let batch = vec![
        new_job("email", None),
        new_job("email", Some("old")),
        new_job("email", Some("new")),
        new_job("email", Some("new")),
        NewJob {
            run_at: T0.plus(SECOND),
            ..new_job("email", None)
        },
    ];
    let out = s.job_insert_batch(batch, T0).await.unwrap();
    assert_eq!(out.len(), 5);
    let Enqueued::Created {
        id: first,
        state: JobState::Queued,
    } = out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        out[1],
        Enqueued::Existing {
            id: existing,
            state: JobState::Queued
        }
    );
    let Enqueued::Created { id: keyed, .. } = out[2] else {
        panic!("{out:?}")
    };
    assert_eq!(
        out[3],
        Enqueued::Existing {
            id: keyed,
            state: JobState::Queued
        }
    );
    assert!(matches!(
        out[4],
        Enqueued::Created {
            state: JobState::Scheduled,
            ..
        }
    ));
    assert!(
        first > existing && keyed > first,
        "ids follow the batch order"
    );
    let counts = s.counts().await.unwrap();
    assert_eq!((counts.queued, counts.scheduled), (3, 1));
    assert!(s.job_insert_batch(Vec::new(), T0).await.unwrap().is_empty());
}

pub async fn concurrent_inserts_all_commit(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let key = (i % 2 == 0).then(|| format!("key-{}", i / 2 % 50));
                s.job_insert(new_job("email", key.as_deref()), T0)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = std::collections::HashSet::new();
    let mut existing = 0;
    for t in tasks {
        match t.await.unwrap() {
            Enqueued::Created { id, .. } => assert!(created.insert(id), "id {id} handed out twice"),
            Enqueued::Existing { .. } => existing += 1,
        }
    }
    // 100 without a key + 50 distinct keys; the other 50 keyed ones are repeats.
    assert_eq!(created.len(), 150);
    assert_eq!(existing, 50);
    assert_eq!(s.counts().await.unwrap().queued, 150);
}

pub async fn delayed_jobs_wait_for_the_promoter(s: &dyn Store) {
    let id = insert(
        s,
        NewJob {
            run_at: T0.plus(10 * SECOND),
            ..new_job("email", None)
        },
    )
    .await;
    assert_eq!(state(s, id).await, JobState::Scheduled);
    assert!(
        s.job_claim(claim_req("email", 10, 1, T0.plus(20 * SECOND)))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.job_next_due().await.unwrap(), Some(T0.plus(10 * SECOND)));
    assert!(s.job_promote(T0.plus(9 * SECOND)).await.unwrap().is_empty());
    assert_eq!(
        s.job_promote(T0.plus(10 * SECOND)).await.unwrap(),
        vec![Moved {
            id,
            job_type: "email".into()
        }]
    );
    assert_eq!(state(s, id).await, JobState::Queued);
    assert_eq!(s.job_next_due().await.unwrap(), None);
    assert_eq!(
        transitions(s, id).await,
        vec![
            (None, JobState::Scheduled),
            (Some(JobState::Scheduled), JobState::Queued)
        ]
    );
}

/// A claim that found nothing does not hide what becomes ready later, in
/// any of the ways a job becomes ready, whether in a later transaction or in
/// the same one as the claim (the two are sent together, which a backend
/// that group-commits applies in one batch, readying first). A backend may
/// remember that a type has no ready job; this is what it must not get wrong.
/// Every way a job becomes ready is seen by the claims that follow it, and
/// by a claim racing it: that claim gets the job, or else the very next one
/// does. (The embedded writer applies a racing write and claim in one batch,
/// the write first; a shared database serves them in either order. A store
/// that wrongly remembered the type as empty would hand the job to neither.)
pub async fn a_claim_sees_every_way_a_job_becomes_ready(s: &dyn Store) {
    let t = |secs: u32| T0.plus(secs * SECOND);
    let claim = |token: i64, now: Timestamp| s.job_claim(claim_req("a", 10, token, now));
    // What a racing claim got, plus what the next claim gets (its token is
    // the racing one's + 100: every claim has a fresh token).
    let raced = |got: StoreResult<Vec<ClaimedJob>>, token: i64, now: Timestamp| async move {
        let mut jobs = got.unwrap();
        jobs.extend(claim(token + 100, now).await.unwrap());
        jobs
    };
    let ids = |jobs: &[ClaimedJob]| jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    assert!(claim(1, t(0)).await.unwrap().is_empty());
    // Enqueued.
    let (first, got) = tokio::join!(insert(s, new_job("a", None)), claim(2, t(0)));
    assert_eq!(ids(&raced(got, 2, t(0)).await), [first]);
    assert!(claim(3, t(0)).await.unwrap().is_empty());
    let (done, got) = tokio::join!(
        s.job_insert_batch(vec![new_job("a", None)], t(0)),
        claim(4, t(0))
    );
    let Enqueued::Created { id: second, .. } = done.unwrap()[0] else {
        panic!("a new job")
    };
    let leased = raced(got, 4, t(0)).await;
    assert_eq!(ids(&leased), [second]);
    assert!(claim(5, t(0)).await.unwrap().is_empty());
    // Released.
    let (released, got) = tokio::join!(
        s.lease_release(second, leased[0].token, t(1)),
        claim(6, t(1))
    );
    assert!(released.unwrap());
    assert_eq!(ids(&raced(got, 6, t(1)).await), [second]);
    assert!(claim(7, t(1)).await.unwrap().is_empty());
    // Requeued by the reaper (the leases expire at t(30) and t(31)).
    let (reaped, got) = tokio::join!(s.lease_reap(t(40)), claim(8, t(40)));
    assert_eq!(reaped.unwrap().requeued.len(), 2);
    let mut running = raced(got, 8, t(40)).await;
    assert_eq!(running.len(), 2);
    assert!(claim(9, t(40)).await.unwrap().is_empty());
    // Promoted.
    let delayed = NewJob {
        run_at: t(50),
        ..new_job("a", None)
    };
    let Enqueued::Created { id: third, .. } = s.job_insert(delayed, t(40)).await.unwrap() else {
        panic!("a new job")
    };
    assert!(claim(10, t(41)).await.unwrap().is_empty());
    let (promoted, got) = tokio::join!(s.job_promote(t(50)), claim(11, t(50)));
    assert_eq!(moved_ids(&promoted.unwrap()), [third]);
    let got = raced(got, 11, t(50)).await;
    assert_eq!(ids(&got), [third]);
    running.extend(got);
    assert!(claim(12, t(50)).await.unwrap().is_empty());
    // Replayed from the dead-letter queue.
    let dead = Outcome::Dead {
        error: "fatal".into(),
    };
    assert!(
        s.job_complete(completion(&running[0], dead, t(51)))
            .await
            .unwrap()
    );
    assert!(claim(13, t(51)).await.unwrap().is_empty());
    let (replayed, got) = tokio::join!(s.job_replay(running[0].id, t(52)), claim(14, t(52)));
    replayed.unwrap();
    assert_eq!(ids(&raced(got, 14, t(52)).await), [running[0].id]);
    // Readied just after a claim that found nothing (in the same batch, on
    // the embedded store).
    let (got, done) = tokio::join!(
        claim(15, t(53)),
        s.job_insert_batch(vec![new_job("a", None)], t(53))
    );
    let Enqueued::Created { id: fourth, .. } = done.unwrap()[0] else {
        panic!("a new job")
    };
    assert_eq!(ids(&raced(got, 15, t(53)).await), [fourth]);
    let (got, fifth) = tokio::join!(claim(17, t(54)), insert(s, new_job("a", Some("k"))));
    assert_eq!(ids(&raced(got, 17, t(54)).await), [fifth]);
}

pub async fn claim_takes_oldest_due_of_one_type_and_counts_the_attempt(s: &dyn Store) {
    let late = insert(
        s,
        NewJob {
            run_at: T0.plus(SECOND),
            ..new_job("email", None)
        },
    )
    .await;
    let early = insert(s, new_job("email", None)).await;
    let _other_type = insert(s, new_job("sms", None)).await;
    s.job_promote(T0.plus(SECOND)).await.unwrap();
    let now = T0.plus(2 * SECOND);
    let claimed = s.job_claim(claim_req("email", 1, 7, now)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, early);
    assert_eq!(
        (
            claimed[0].attempt,
            claimed[0].max_attempts,
            claimed[0].token
        ),
        (1, 3, 7)
    );
    let job = s.job_get(early).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.started_at, Some(now));
    assert_eq!(job.lease_expires_at, Some(now.plus(30 * SECOND)));
    let rest = s.job_claim(claim_req("email", 10, 8, now)).await.unwrap();
    assert_eq!(rest.iter().map(|j| j.id).collect::<Vec<_>>(), vec![late]);
    assert!(
        s.job_claim(claim_req("email", 10, 9, now))
            .await
            .unwrap()
            .is_empty()
    );
    let events = s.job_events(early).await.unwrap();
    assert_eq!(
        events.last().unwrap().plugin_digest.as_deref(),
        Some("sha256:test")
    );
}

/// Claims take the highest priority first and, within a priority, the
/// oldest due first (then the lowest id); a job's priority and deadline
/// are kept as submitted, by one insert or a batch, and through a retry.
pub async fn claims_take_the_highest_priority_first_fifo_within_one(s: &dyn Store) {
    let job = |priority: i16, due: u32| NewJob {
        priority,
        run_at: T0.plus(SECOND * due),
        ..new_job("email", None)
    };
    // Inserted out of order: late normal, early low, two urgent (the
    // later-due one first), early normal.
    let normal_late = insert(s, job(0, 2)).await;
    let low = insert(s, job(-100, 0)).await;
    let urgent_late = insert(s, job(100, 1)).await;
    let batch = s
        .job_insert_batch(
            vec![
                job(100, 0),
                NewJob {
                    timeout_ms: Some(250),
                    ..job(0, 0)
                },
            ],
            T0,
        )
        .await
        .unwrap();
    let [
        Enqueued::Created {
            id: urgent_early, ..
        },
        Enqueued::Created {
            id: normal_early, ..
        },
    ] = batch[..]
    else {
        panic!("two new jobs: {batch:?}")
    };
    let now = T0.plus(3 * SECOND);
    s.job_promote(now).await.unwrap();
    let first = s.job_claim(claim_req("email", 3, 1, now)).await.unwrap();
    assert_eq!(
        first.iter().map(|j| j.id).collect::<Vec<_>>(),
        [urgent_early, urgent_late, normal_early],
        "the two urgent jobs, oldest due first, then the oldest normal one"
    );
    assert_eq!(
        first
            .iter()
            .map(|j| (j.priority, j.timeout_ms))
            .collect::<Vec<_>>(),
        [(100, None), (100, None), (0, Some(250))]
    );
    let record = s.job_get(normal_early).await.unwrap().unwrap();
    assert_eq!((record.priority, record.timeout_ms), (0, Some(250)));
    // A retry keeps its priority: due again, it goes before the normal job
    // and the low one.
    let retry = Outcome::Retry {
        error: "again".into(),
        run_at: now,
    };
    assert!(
        s.job_complete(completion(&first[0], retry, now))
            .await
            .unwrap()
    );
    s.job_promote(now).await.unwrap();
    let rest = s.job_claim(claim_req("email", 10, 2, now)).await.unwrap();
    assert_eq!(
        rest.iter().map(|j| j.id).collect::<Vec<_>>(),
        [urgent_early, normal_late, low]
    );
    assert_eq!(s.job_get(low).await.unwrap().unwrap().priority, -100);
}

pub async fn concurrent_claims_hand_each_job_to_one_claimer(s: Arc<dyn Store>) {
    for _ in 0..120 {
        insert(&*s, new_job("email", None)).await;
    }
    let claimers: Vec<_> = (0..6)
        .map(|c| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for round in 0.. {
                    // A fresh token for every claim, as the contract asks.
                    let token = c * 1_000 + round;
                    let got = s.job_claim(claim_req("email", 7, token, T0)).await.unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|j| j.id));
                }
                unreachable!()
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let unique: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 120, "every job claimed");
    assert_eq!(unique.len(), 120, "no job claimed twice");
    for id in all {
        let claims = transitions(&*s, id)
            .await
            .iter()
            .filter(|t| t.1 == JobState::Running)
            .count();
        assert_eq!(claims, 1, "job {id} has {claims} claim events");
    }
}

pub async fn concurrent_completions_apply_once_each(s: Arc<dyn Store>) {
    for _ in 0..50 {
        insert(&*s, new_job("email", None)).await;
    }
    let jobs = s.job_claim(claim_req("email", 50, 77, T0)).await.unwrap();
    assert_eq!(jobs.len(), 50);
    // Every job is reported twice at once: by a stale holder and by the
    // real one. Only the real report may apply.
    let tasks: Vec<_> = jobs
        .iter()
        .flat_map(|job| {
            let stale = ClaimedJob {
                token: 78,
                ..job.clone()
            };
            [(stale, false), (job.clone(), true)]
        })
        .map(|(job, real)| {
            let s = s.clone();
            tokio::spawn(async move {
                let ok = Outcome::Succeeded {
                    result: Some(format!("{{\"real\":{real}}}")),
                };
                (
                    real,
                    s.job_complete(completion(&job, ok, T0)).await.unwrap(),
                )
            })
        })
        .collect();
    for t in tasks {
        let (real, applied) = t.await.unwrap();
        assert_eq!(
            real, applied,
            "only the current lease holder's report applies"
        );
    }
    for job in &jobs {
        let rec = s.job_get(job.id).await.unwrap().unwrap();
        assert_eq!(rec.result.as_deref(), Some(r#"{"real":true}"#));
        let done = transitions(&*s, job.id)
            .await
            .iter()
            .filter(|t| t.1 == JobState::Succeeded)
            .count();
        assert_eq!(done, 1);
    }
}

pub async fn a_failing_write_fails_alone(s: Arc<dyn Store>) {
    // Writes that arrive together share a transaction; one that the database
    // refuses (max_attempts 0 breaks a CHECK) must not take the others down.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let max_attempts = if i == 25 { 0 } else { 3 };
                s.job_insert(
                    NewJob {
                        max_attempts,
                        ..new_job("email", None)
                    },
                    T0,
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut failed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Enqueued::Created { .. }) => ok += 1,
            Err(StoreError::Backend(_)) => failed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((ok, failed), (49, 1));
    assert_eq!(s.counts().await.unwrap().queued, 49);
    // A batch with a bad job is refused whole.
    let batch = vec![
        new_job("email", None),
        NewJob {
            max_attempts: 0,
            ..new_job("email", None)
        },
    ];
    assert!(matches!(
        s.job_insert_batch(batch, T0).await,
        Err(StoreError::Backend(_))
    ));
    assert_eq!(s.counts().await.unwrap().queued, 49);
}

pub async fn completion_is_fenced_by_the_lease_token(s: &dyn Store) {
    let id = insert(s, new_job("email", None)).await;
    let job = s
        .job_claim(claim_req("email", 1, 11, T0))
        .await
        .unwrap()
        .remove(0);
    let forged = ClaimedJob {
        token: 12,
        ..job.clone()
    };
    let ok = Outcome::Succeeded {
        result: Some(r#"{"sent":true}"#.into()),
    };
    assert!(
        !s.job_complete(completion(&forged, ok.clone(), T0))
            .await
            .unwrap()
    );
    assert_eq!(state(s, id).await, JobState::Running);
    let began = T0.plus(SECOND / 2);
    let report = Completion {
        started_at: began,
        ..completion(&job, ok.clone(), T0.plus(SECOND))
    };
    assert!(s.job_complete(report).await.unwrap());
    let done = s.job_get(id).await.unwrap().unwrap();
    assert_eq!(
        done.started_at,
        Some(began),
        "the attempt's real start replaces the lease time"
    );
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result.as_deref(), Some(r#"{"sent":true}"#));
    assert_eq!(done.plugin_digest.as_deref(), Some("sha256:test"));
    assert_eq!(done.finished_at, Some(T0.plus(SECOND)));
    assert_eq!(done.lease_expires_at, None);
    // A second report of the same attempt changes nothing.
    assert!(
        !s.job_complete(completion(
            &job,
            Outcome::Dead {
                error: "late".into()
            },
            T0
        ))
        .await
        .unwrap()
    );
    assert_eq!(state(s, id).await, JobState::Succeeded);
    assert_eq!(
        transitions(s, id).await,
        vec![
            (None, JobState::Queued),
            (Some(JobState::Queued), JobState::Running),
            (Some(JobState::Running), JobState::Succeeded)
        ]
    );
}

pub async fn retry_schedules_and_dead_records_the_error(s: &dyn Store) {
    let id = insert(s, new_job("email", None)).await;
    let job = s
        .job_claim(claim_req("email", 1, 1, T0))
        .await
        .unwrap()
        .remove(0);
    let retry_at = T0.plus(5 * SECOND);
    let outcome = Outcome::Retry {
        error: "provider busy".into(),
        run_at: retry_at,
    };
    assert!(s.job_complete(completion(&job, outcome, T0)).await.unwrap());
    let rec = s.job_get(id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.run_at, rec.attempt),
        (JobState::Scheduled, retry_at, 1)
    );
    assert_eq!(rec.last_error.as_deref(), Some("provider busy"));
    assert_eq!(rec.finished_at, None);
    assert_eq!(moved_ids(&s.job_promote(retry_at).await.unwrap()), vec![id]);
    let job = s
        .job_claim(claim_req("email", 1, 2, retry_at))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(job.attempt, 2);
    assert!(
        s.job_complete(completion(
            &job,
            Outcome::Dead {
                error: "fatal: bad user".into()
            },
            retry_at
        ))
        .await
        .unwrap()
    );
    let rec = s.job_get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Dead);
    assert_eq!(rec.last_error.as_deref(), Some("fatal: bad user"));
    let events = s.job_events(id).await.unwrap();
    assert_eq!(
        events.last().unwrap().reason.as_deref(),
        Some("fatal: bad user")
    );
    assert_eq!(events.last().unwrap().attempt, 2);
}

pub async fn reaper_requeues_expired_leases_and_fences_out_the_late_holder(s: &dyn Store) {
    let id = insert(s, new_job("email", None)).await;
    let job = s
        .job_claim(claim_req("email", 1, 1, T0))
        .await
        .unwrap()
        .remove(0);
    // Not expired yet: untouched.
    assert_eq!(
        s.lease_reap(T0.plus(29 * SECOND)).await.unwrap(),
        Reaped::default()
    );
    let reaped = s.lease_reap(T0.plus(30 * SECOND)).await.unwrap();
    assert_eq!(
        reaped.requeued,
        vec![Moved {
            id,
            job_type: "email".into()
        }]
    );
    let rec = s.job_get(id).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempt), (JobState::Queued, 1));
    assert!(rec.last_error.unwrap().contains("lease expired"));
    // The old holder wakes up late: its report changes nothing.
    let late = Outcome::Succeeded { result: None };
    assert!(
        !s.job_complete(completion(&job, late, T0.plus(31 * SECOND)))
            .await
            .unwrap()
    );
    assert_eq!(state(s, id).await, JobState::Queued);
    // Nor can it release the lease it lost.
    assert!(
        !s.lease_release(id, job.token, T0.plus(31 * SECOND))
            .await
            .unwrap()
    );
    // The next holder gets attempt 2.
    let again = s
        .job_claim(claim_req("email", 1, 2, T0.plus(32 * SECOND)))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(again.attempt, 2);
}

pub async fn reaper_sends_an_expired_last_attempt_to_the_dlq(s: &dyn Store) {
    let id = insert(
        s,
        NewJob {
            max_attempts: 1,
            ..new_job("email", None)
        },
    )
    .await;
    s.job_claim(claim_req("email", 1, 1, T0)).await.unwrap();
    let reaped = s.lease_reap(T0.plus(60 * SECOND)).await.unwrap();
    assert_eq!(reaped.dead.len(), 1);
    let (buried, rec) = (&reaped.dead[0], s.job_get(id).await.unwrap().unwrap());
    assert_eq!((buried.id, buried.job_type.as_str()), (id, "email"));
    assert_eq!(Some(&buried.error), rec.last_error.as_ref());
    assert_eq!(rec.state, JobState::Dead);
    assert!(rec.finished_at.is_some());
    let last = s.job_events(id).await.unwrap().pop().unwrap();
    assert_eq!((last.actor.as_str(), last.to), ("reaper", JobState::Dead));
}

pub async fn release_returns_the_job_without_spending_the_attempt(s: &dyn Store) {
    let id = insert(s, new_job("email", None)).await;
    let job = s
        .job_claim(claim_req("email", 1, 5, T0))
        .await
        .unwrap()
        .remove(0);
    assert!(!s.lease_release(id, 6, T0).await.unwrap(), "wrong token");
    assert!(s.lease_release(id, job.token, T0).await.unwrap());
    let rec = s.job_get(id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.lease_expires_at),
        (JobState::Queued, 0, None)
    );
    let again = s
        .job_claim(claim_req("email", 1, 6, T0))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(again.attempt, 1);
}

pub async fn replay_moves_only_dead_jobs_with_a_fresh_budget(s: &dyn Store) {
    let id = insert(s, new_job("email", None)).await;
    assert!(matches!(
        s.job_replay(id, T0).await,
        Err(StoreError::WrongState {
            state: JobState::Queued,
            ..
        })
    ));
    assert!(matches!(
        s.job_replay(id + 99, T0).await,
        Err(StoreError::NotFound(_))
    ));
    let job = s
        .job_claim(claim_req("email", 1, 1, T0))
        .await
        .unwrap()
        .remove(0);
    s.job_complete(completion(
        &job,
        Outcome::Dead {
            error: "boom".into(),
        },
        T0,
    ))
    .await
    .unwrap();
    let replayed = s.job_replay(id, T0.plus(SECOND)).await.unwrap();
    assert_eq!(
        (replayed.state, replayed.attempt, replayed.run_at),
        (JobState::Queued, 0, T0.plus(SECOND))
    );
    assert_eq!(replayed.finished_at, None);
    let last = s.job_events(id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.from, last.to, last.actor.as_str()),
        (Some(JobState::Dead), JobState::Queued, "admin")
    );
    // It runs again from attempt 1.
    assert_eq!(
        s.job_claim(claim_req("email", 1, 2, T0.plus(SECOND)))
            .await
            .unwrap()[0]
            .attempt,
        1
    );
}

pub async fn cancel_withdraws_waiting_and_running_jobs(s: &dyn Store) {
    let queued = insert(s, new_job("email", None)).await;
    let scheduled = insert(
        s,
        NewJob {
            run_at: T0.plus(SECOND),
            ..new_job("email", None)
        },
    )
    .await;
    assert_eq!(
        s.job_cancel(queued, T0).await.unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        s.job_cancel(scheduled, T0).await.unwrap().state,
        JobState::Cancelled
    );
    assert!(matches!(
        s.job_cancel(queued, T0).await,
        Err(StoreError::WrongState {
            state: JobState::Cancelled,
            ..
        })
    ));
    // A running job: cancelled, its lease taken away.
    let running = insert(s, new_job("email", None)).await;
    let other = insert(s, new_job("email", None)).await;
    let leased = s.job_claim(claim_req("email", 2, 1, T0)).await.unwrap();
    assert_eq!(leased.len(), 2);
    let held: Vec<(JobId, i64)> = leased.iter().map(|j| (j.id, j.token)).collect();
    assert!(s.leases_lost(&held).await.unwrap().is_empty());
    let cancelled = s.job_cancel(running, T0.plus(SECOND)).await.unwrap();
    assert_eq!(
        (
            cancelled.state,
            cancelled.lease_expires_at,
            cancelled.finished_at
        ),
        (JobState::Cancelled, None, Some(T0.plus(SECOND)))
    );
    // The worker that holds it learns so; the other lease still holds, and
    // a lease never held (a wrong token, an unknown job) is lost.
    let token = leased.iter().find(|j| j.id == running).unwrap().token;
    assert_eq!(s.leases_lost(&held).await.unwrap(), [(running, token)]);
    assert_eq!(
        s.leases_lost(&[(other, 999), (other + 1000, 1)])
            .await
            .unwrap(),
        [(other, 999), (other + 1000, 1)]
    );
    // Its attempt's end changes nothing: it never completes as succeeded,
    // nor reports progress.
    let attempt = leased.iter().find(|j| j.id == running).unwrap();
    let ok = Outcome::Succeeded { result: None };
    assert!(
        !s.job_complete(completion(attempt, ok, T0.plus(2 * SECOND)))
            .await
            .unwrap()
    );
    assert!(!s.job_progress(running, attempt.token, 50).await.unwrap());
    assert_eq!(state(s, running).await, JobState::Cancelled);
    let history = s.job_events(running).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(
        (last.from, last.to),
        (Some(JobState::Running), JobState::Cancelled)
    );
    // A finished job is not cancelled.
    let done = leased.iter().find(|j| j.id == other).unwrap();
    let ok = Outcome::Succeeded { result: None };
    assert!(s.job_complete(completion(done, ok, T0)).await.unwrap());
    assert!(matches!(
        s.job_cancel(other, T0).await,
        Err(StoreError::WrongState {
            state: JobState::Succeeded,
            ..
        })
    ));
    // Nor is the cancelled one reaped when its lease would have expired.
    let reaped = s.lease_reap(T0.plus(3600 * SECOND)).await.unwrap();
    assert!(reaped.requeued.iter().all(|m| m.id != running));
    assert!(reaped.dead.iter().all(|b| b.id != running));
    assert_eq!(state(s, running).await, JobState::Cancelled);
    // A cancelled job is never claimed or promoted.
    assert!(s.job_promote(T0.plus(SECOND)).await.unwrap().is_empty());
    assert!(
        s.job_claim(claim_req("email", 10, 2, T0.plus(SECOND)))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Schedules: created, replaced (keeping the next tick when the cadence is
/// the same), moved past a tick only from the tick it was fired from, and
/// deleted.
pub async fn schedules_are_kept_and_advance_once_per_tick(s: &dyn Store) {
    let daily = Schedule {
        name: "digest".into(),
        job_type: "email".into(),
        cron: "0 9 * * *".into(),
        timezone: "UTC".into(),
        payload: r#"{"n":1}"#.into(),
        source: "api".into(),
        next_run_at: T0.plus(SECOND),
        last_run_at: None,
        last_job_id: None,
        created_at: T0,
        updated_at: T0,
    };
    assert!(s.schedules().await.unwrap().is_empty());
    assert!(s.schedule_put(&daily).await.unwrap(), "created");
    assert_eq!(s.schedules().await.unwrap(), std::slice::from_ref(&daily));
    // Fired by two hosts: the move applies once.
    let advance = Advance {
        name: "digest".into(),
        from: T0.plus(SECOND),
        next: T0.plus(60 * SECOND),
        fired: T0.plus(SECOND),
        job: 17,
        now: T0.plus(2 * SECOND),
    };
    assert!(s.schedule_advance(&advance).await.unwrap());
    assert!(!s.schedule_advance(&advance).await.unwrap());
    let fired = s.schedules().await.unwrap().remove(0);
    assert_eq!(
        (fired.next_run_at, fired.last_run_at, fired.last_job_id),
        (T0.plus(60 * SECOND), Some(T0.plus(SECOND)), Some(17))
    );
    // The same cadence again (a manifest loaded again): the next tick and
    // the history stay; the payload is the new one.
    let again = Schedule {
        payload: r#"{"n":2}"#.into(),
        next_run_at: T0.plus(5 * SECOND),
        updated_at: T0.plus(3 * SECOND),
        ..daily.clone()
    };
    assert!(!s.schedule_put(&again).await.unwrap(), "replaced");
    let kept = s.schedules().await.unwrap().remove(0);
    assert_eq!(
        (
            &kept.payload[..],
            kept.next_run_at,
            kept.last_job_id,
            kept.created_at
        ),
        (r#"{"n":2}"#, T0.plus(60 * SECOND), Some(17), T0)
    );
    // Another cadence takes the new next tick.
    let hourly = Schedule {
        cron: "0 * * * *".into(),
        ..again.clone()
    };
    assert!(!s.schedule_put(&hourly).await.unwrap());
    let moved = s.schedules().await.unwrap().remove(0);
    assert_eq!(
        (&moved.cron[..], moved.next_run_at),
        ("0 * * * *", T0.plus(5 * SECOND))
    );
    let other = Schedule {
        name: "another".into(),
        ..daily.clone()
    };
    assert!(s.schedule_put(&other).await.unwrap());
    let names: Vec<String> = s
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["another", "digest"]);
    assert!(s.schedule_delete("digest").await.unwrap());
    assert!(!s.schedule_delete("digest").await.unwrap());
    assert!(!s.schedule_advance(&advance).await.unwrap());
    assert_eq!(s.schedules().await.unwrap().len(), 1);
}

pub async fn kv_keeps_each_scope_apart_and_sets_once(s: &dyn Store) {
    assert_eq!(s.kv_get("a", "k").await.unwrap(), None);
    assert!(
        s.kv_write("a", "k", KvWrite::SetIfAbsent(b"1".to_vec()))
            .await
            .unwrap()
    );
    // Set once: a second set-if-absent leaves the first value.
    assert!(
        !s.kv_write("a", "k", KvWrite::SetIfAbsent(b"2".to_vec()))
            .await
            .unwrap()
    );
    assert_eq!(s.kv_get("a", "k").await.unwrap(), Some(b"1".to_vec()));
    // Another scope (another plugin) sees nothing of it, and has its own.
    assert_eq!(s.kv_get("b", "k").await.unwrap(), None);
    assert!(
        s.kv_write("b", "k", KvWrite::SetIfAbsent(b"b".to_vec()))
            .await
            .unwrap()
    );
    assert_eq!(s.kv_get("a", "k").await.unwrap(), Some(b"1".to_vec()));
    // Set overwrites; values are bytes, any bytes.
    let bytes = vec![0u8, 255, 10, 0];
    assert!(
        s.kv_write("a", "k", KvWrite::Set(bytes.clone()))
            .await
            .unwrap()
    );
    assert_eq!(s.kv_get("a", "k").await.unwrap(), Some(bytes));
    assert!(s.kv_write("a", "k", KvWrite::Delete).await.unwrap());
    assert!(!s.kv_write("a", "k", KvWrite::Delete).await.unwrap());
    assert_eq!(s.kv_get("a", "k").await.unwrap(), None);
    assert_eq!(s.kv_get("b", "k").await.unwrap(), Some(b"b".to_vec()));
}

/// Progress is written only under the attempt's lease, and each attempt
/// starts from none.
pub async fn progress_is_fenced_by_the_lease_and_cleared_by_a_new_attempt(s: &dyn Store) {
    let id = insert(s, new_job("email", None)).await;
    // Not running: nothing to report on.
    assert!(!s.job_progress(id, 7, 10).await.unwrap());
    let job = s.job_claim(claim_req("email", 1, 7, T0)).await.unwrap()[0].clone();
    assert_eq!(s.job_get(id).await.unwrap().unwrap().progress, None);
    assert!(s.job_progress(id, 7, 40).await.unwrap());
    assert!(
        !s.job_progress(id, 8, 90).await.unwrap(),
        "another lease's token"
    );
    assert_eq!(s.job_get(id).await.unwrap().unwrap().progress, Some(40));
    // Progress writes no event.
    assert_eq!(transitions(s, id).await.len(), 2);
    let later = T0.plus(SECOND);
    let retry = Outcome::Retry {
        error: "try again".into(),
        run_at: later,
    };
    assert!(
        s.job_complete(completion(&job, retry, later))
            .await
            .unwrap()
    );
    // The failed attempt's progress stays on view until the next starts...
    assert!(
        !s.job_progress(id, 7, 50).await.unwrap(),
        "the lease is gone"
    );
    assert_eq!(s.job_get(id).await.unwrap().unwrap().progress, Some(40));
    s.job_promote(later).await.unwrap();
    s.job_claim(claim_req("email", 1, 9, later)).await.unwrap();
    // ...which starts from none.
    assert_eq!(s.job_get(id).await.unwrap().unwrap().progress, None);
    assert!(s.job_progress(id, 9, 100).await.unwrap());
    assert_eq!(s.job_get(id).await.unwrap().unwrap().progress, Some(100));
}

/// Each write is seen by the next call at once, in the order written, and
/// stays after `kv_durable`.
pub async fn kv_calls_see_every_write_before_them(s: &dyn Store) {
    let set = |v: &str| KvWrite::Set(v.as_bytes().to_vec());
    assert!(s.kv_write("a", "k", set("1")).await.unwrap());
    assert!(s.kv_write("a", "k", set("2")).await.unwrap());
    assert_eq!(s.kv_get("a", "k").await.unwrap(), Some(b"2".to_vec()));
    assert!(s.kv_write("a", "k", KvWrite::Delete).await.unwrap());
    assert_eq!(s.kv_get("a", "k").await.unwrap(), None);
    assert!(!s.kv_write("a", "k", KvWrite::Delete).await.unwrap());
    let once = |v: &str| KvWrite::SetIfAbsent(v.as_bytes().to_vec());
    assert!(s.kv_write("a", "k", once("3")).await.unwrap());
    assert!(!s.kv_write("a", "k", once("4")).await.unwrap());
    s.kv_durable().await.unwrap();
    assert_eq!(s.kv_get("a", "k").await.unwrap(), Some(b"3".to_vec()));
    assert!(!s.kv_write("a", "k", once("5")).await.unwrap());
}

/// Paused types are kept until resumed; pausing twice changes nothing.
pub async fn paused_types_are_kept_until_resumed(s: &dyn Store) {
    assert!(s.queues_paused().await.unwrap().is_empty());
    assert!(s.queue_pause("sms", true, T0).await.unwrap());
    assert!(!s.queue_pause("sms", true, T0).await.unwrap());
    assert!(s.queue_pause("email", true, T0).await.unwrap());
    assert_eq!(s.queues_paused().await.unwrap(), ["email", "sms"]);
    assert!(s.queue_pause("sms", false, T0).await.unwrap());
    assert!(!s.queue_pause("sms", false, T0).await.unwrap());
    assert_eq!(s.queues_paused().await.unwrap(), ["email"]);
}

/// Many writers race to set the same key first: exactly one wins.
pub async fn kv_set_if_absent_has_one_winner(s: Arc<dyn Store>) {
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..32u8 {
        let s = s.clone();
        racers.spawn(async move {
            s.kv_write("email", "welcome:42", KvWrite::SetIfAbsent(vec![i]))
                .await
                .unwrap()
        });
    }
    let mut winners = 0;
    while let Some(won) = racers.join_next().await {
        winners += usize::from(won.unwrap());
    }
    assert_eq!(winners, 1);
}

fn listing(state: Option<JobState>, job_type: Option<&str>, before: Option<JobId>) -> JobQuery {
    JobQuery {
        state,
        job_type: job_type.map(Into::into),
        before,
        limit: 2,
    }
}

/// The listing: newest first, filtered by state and type, in pages that
/// neither repeat nor skip a job, whatever is created meanwhile.
pub async fn the_listing_pages_newest_first(s: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let job_type = if i % 2 == 0 { "email" } else { "sms" };
        ids.push(insert(s, new_job(job_type, None)).await);
    }
    let running = s.job_claim(claim_req("email", 1, 1, T0)).await.unwrap();
    assert_eq!(running[0].id, ids[0]);
    let page = |q: JobQuery| async move {
        let jobs = s.job_list(&q).await.unwrap();
        jobs.iter().map(|j| j.id).collect::<Vec<_>>()
    };
    assert_eq!(page(listing(None, None, None)).await, [ids[4], ids[3]]);
    // A job created after the first page does not shift the next ones.
    let newest = insert(s, new_job("sms", None)).await;
    assert_eq!(
        page(listing(None, None, Some(ids[3]))).await,
        [ids[2], ids[1]]
    );
    assert_eq!(page(listing(None, None, Some(ids[1]))).await, [ids[0]]);
    assert!(page(listing(None, None, Some(ids[0]))).await.is_empty());
    let queued = Some(JobState::Queued);
    assert_eq!(
        page(listing(queued, Some("email"), None)).await,
        [ids[4], ids[2]]
    );
    assert!(
        page(listing(queued, Some("email"), Some(ids[2])))
            .await
            .is_empty()
    );
    let running = Some(JobState::Running);
    assert_eq!(page(listing(running, None, None)).await, [ids[0]]);
    assert_eq!(
        page(listing(None, Some("sms"), None)).await,
        [newest, ids[3]]
    );
    // Every state's plan (on SQLite, few jobs: through its partial index).
    for state in [
        JobState::Dead,
        JobState::Scheduled,
        JobState::Cancelled,
        JobState::Succeeded,
    ] {
        assert!(page(listing(Some(state), None, None)).await.is_empty());
        let narrow = listing(Some(state), Some("sms"), Some(ids[4]));
        assert!(page(narrow).await.is_empty());
    }
    let one = JobQuery {
        limit: 1,
        ..listing(None, Some("nope"), None)
    };
    assert!(page(one).await.is_empty());
    // The records are whole.
    let jobs = s.job_list(&listing(running, None, None)).await.unwrap();
    assert_eq!(jobs[0], s.job_get(ids[0]).await.unwrap().unwrap());
}

/// Dead jobs with their errors: three of type `email`, two of `sms`.
async fn bury(s: &dyn Store, errors: &[(&str, &str)]) -> Vec<JobId> {
    let mut ids = Vec::new();
    for (token, (job_type, error)) in errors.iter().enumerate() {
        let id = insert(s, new_job(job_type, None)).await;
        let job = s
            .job_claim(claim_req(job_type, 1, token as i64 + 1, T0))
            .await
            .unwrap()
            .remove(0);
        let dead = Outcome::Dead {
            error: (*error).into(),
        };
        assert!(s.job_complete(completion(&job, dead, T0)).await.unwrap());
        ids.push(id);
    }
    ids
}

/// A bulk replay moves exactly the dead jobs its filter picks, in one go,
/// each with its event, and claims then take them in their original order.
pub async fn a_bulk_replay_moves_the_dead_jobs_it_picks(s: &dyn Store) {
    let ids = bury(
        s,
        &[
            ("email", "smtp timeout"),
            ("sms", "gateway down"),
            ("email", "bad address"),
            ("email", "smtp refused"),
            ("sms", "gateway down again"),
        ],
    )
    .await;
    let later = T0.plus(SECOND);
    let replay = |filter: DeadFilter| async move {
        moved_ids(&s.job_replay_dead(&filter, later).await.unwrap())
    };
    let nothing = DeadFilter {
        job_type: Some("sms".into()),
        error_contains: Some("smtp".into()),
        ..DeadFilter::default()
    };
    assert!(replay(nothing).await.is_empty());
    let smtp = DeadFilter {
        error_contains: Some("smtp".into()),
        ..DeadFilter::default()
    };
    assert_eq!(replay(smtp.clone()).await, [ids[0], ids[3]]);
    assert!(replay(smtp).await.is_empty(), "they are not dead any more");
    let one = DeadFilter {
        ids: Some(vec![ids[4], ids[0], 999_999]),
        ..DeadFilter::default()
    };
    assert_eq!(replay(one).await, [ids[4]]);
    let dead_left = s.job_list(&listing(Some(JobState::Dead), None, None)).await;
    assert_eq!(
        dead_left.unwrap().iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[2], ids[1]]
    );
    assert_eq!(replay(DeadFilter::default()).await, [ids[1], ids[2]]);
    assert_eq!(s.counts().await.unwrap().dead, 0);
    assert_eq!(s.counts().await.unwrap().queued, 5);
    let job = s.job_get(ids[3]).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.attempt, job.run_at),
        (JobState::Queued, 0, later)
    );
    assert_eq!(job.last_error.as_deref(), Some("smtp refused"), "kept");
    // Each job has one replay event, after its others: the three of its
    // burial (enqueued, claimed, dead) come first.
    for id in &ids {
        let events = s.job_events(*id).await.unwrap();
        assert_eq!(events.len(), 4, "job {id}: {events:?}");
        let last = events.last().unwrap();
        assert_eq!(
            (last.from, last.to, last.at, last.attempt),
            (Some(JobState::Dead), JobState::Queued, later, 0),
            "job {id}"
        );
        assert_eq!(last.actor, history::OPERATOR_ACTOR.name);
        assert_eq!(last.reason.as_deref(), Some(history::REPLAY_REASON));
        assert_eq!(last.plugin_digest, None);
    }
    // Claimed in their original order.
    let claimed = s.job_claim(claim_req("email", 10, 9, later)).await.unwrap();
    let claimed: Vec<JobId> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(claimed, [ids[0], ids[2], ids[3]]);
}

/// Retention: a prune deletes only finished jobs of its state (and type)
/// that finished before its time, oldest first, with their history, and
/// keeps the counts; their idempotency keys are free again.
pub async fn a_prune_deletes_only_old_finished_jobs(s: &dyn Store) {
    // Succeeded at T0 + 1..=4 s (the third of type sms), dead at T0 + 1 s.
    let mut succeeded = Vec::new();
    for (i, job_type) in ["email", "email", "sms", "email"].into_iter().enumerate() {
        let key = format!("key-{i}");
        let id = insert(s, new_job(job_type, Some(&key))).await;
        let job = s
            .job_claim(claim_req(job_type, 1, 100 + i as i64, T0))
            .await
            .unwrap()
            .remove(0);
        let done = Outcome::Succeeded { result: None };
        let at = T0.plus(SECOND * (i as u32 + 1));
        assert!(s.job_complete(completion(&job, done, at)).await.unwrap());
        succeeded.push(id);
    }
    let dead = bury(s, &[("email", "boom")]).await[0];
    let cancelled = insert(s, new_job("email", None)).await;
    s.job_cancel(cancelled, T0).await.unwrap();
    let queued = insert(s, new_job("email", None)).await;
    let prune = |state, job_type: Option<&str>, before: u32, limit| Prune {
        state,
        job_type: job_type.map(Into::into),
        finished_before: T0.plus(SECOND * before),
        limit,
    };
    let gone = |id| async move { s.job_get(id).await.unwrap().is_none() };

    // Oldest first, at most `limit`.
    let first = prune(JobState::Succeeded, None, 4, 1);
    assert_eq!(s.job_prune(&first).await.unwrap(), 1);
    assert!(gone(succeeded[0]).await);
    assert!(s.job_events(succeeded[0]).await.unwrap().is_empty());
    // One type only.
    let sms = prune(JobState::Succeeded, Some("sms"), 10, 100);
    assert_eq!(s.job_prune(&sms).await.unwrap(), 1);
    assert!(gone(succeeded[2]).await);
    // Only what finished before the time: the job done at T0 + 4 s stays.
    let rest = prune(JobState::Succeeded, None, 4, 100);
    assert_eq!(s.job_prune(&rest).await.unwrap(), 1);
    assert!(gone(succeeded[1]).await);
    assert!(!gone(succeeded[3]).await);
    assert_eq!(s.job_events(succeeded[3]).await.unwrap().len(), 3);
    // Other states are left alone by a prune of succeeded jobs, and an
    // unfinished job is never pruned.
    for state in [JobState::Queued, JobState::Running, JobState::Scheduled] {
        assert_eq!(
            s.job_prune(&prune(state, None, 3600, 100)).await.unwrap(),
            0
        );
    }
    assert!(!gone(dead).await && !gone(cancelled).await && !gone(queued).await);
    assert_eq!(
        s.job_prune(&prune(JobState::Dead, None, 3600, 100))
            .await
            .unwrap(),
        1
    );
    assert!(gone(dead).await);
    assert_eq!(
        s.job_prune(&prune(JobState::Cancelled, None, 3600, 100))
            .await
            .unwrap(),
        1
    );
    assert!(gone(cancelled).await && !gone(queued).await);

    let all = s.counts().await.unwrap();
    assert_eq!(
        (all.succeeded, all.dead, all.cancelled, all.queued),
        (1, 0, 0, 1)
    );
    let by_type = s.counts_by_type().await.unwrap();
    let sms = by_type
        .iter()
        .find(|(t, _)| t == "sms")
        .map(|(_, c)| c.succeeded);
    assert_eq!(sms.unwrap_or(0), 0);
    // A pruned job's key names no job any more; a kept one's still does.
    let again = s
        .job_insert(new_job("email", Some("key-0")), T0)
        .await
        .unwrap();
    assert!(matches!(again, Enqueued::Created { id, .. } if id != succeeded[0]));
    let kept = s
        .job_insert(new_job("email", Some("key-3")), T0)
        .await
        .unwrap();
    assert!(matches!(kept, Enqueued::Existing { id, .. } if id == succeeded[3]));
}

pub async fn counts_per_state_and_type(s: &dyn Store) {
    insert(s, new_job("email", None)).await;
    insert(s, new_job("email", None)).await;
    insert(s, new_job("sms", None)).await;
    insert(
        s,
        NewJob {
            run_at: T0.plus(SECOND),
            ..new_job("sms", None)
        },
    )
    .await;
    s.job_claim(claim_req("email", 1, 1, T0)).await.unwrap();
    let all = s.counts().await.unwrap();
    assert_eq!((all.queued, all.running, all.scheduled), (2, 1, 1));
    let by_type = s.counts_by_type().await.unwrap();
    let names: Vec<_> = by_type.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, vec!["email", "sms"]);
    assert_eq!((by_type[0].1.queued, by_type[0].1.running), (1, 1));
    assert_eq!((by_type[1].1.queued, by_type[1].1.scheduled), (1, 1));
}

/// One claim for several types (a worker's round): each type up to its own
/// limit, earlier requests first, at most `total` in all; each job leased
/// with its own request's token and expiry.
pub async fn a_claim_for_several_types_takes_each_up_to_its_limit(s: &dyn Store) {
    let mut ids: std::collections::BTreeMap<&str, Vec<JobId>> = Default::default();
    // The last type asked for has the oldest jobs: the order of the requests
    // decides, not the age of the jobs.
    for job_type in ["c", "c", "c", "a", "a", "a", "b", "b", "b"] {
        let id = insert(s, new_job(job_type, None)).await;
        ids.entry(job_type).or_default().push(id);
    }
    let mut b = claim_req("b", 2, 20, T0);
    b.lease_expires_at = T0.plus(99 * SECOND);
    let wait = claim_wait(
        vec![claim_req("a", 2, 10, T0), b, claim_req("c", 3, 30, T0)],
        5,
    );
    let jobs = s.job_claim_wait(wait).await.unwrap();
    let mut got: std::collections::BTreeMap<&str, Vec<(JobId, i64)>> = Default::default();
    for job in &jobs {
        let job_type = ["a", "b", "c"]
            .into_iter()
            .find(|t| *t == job.job_type)
            .expect("a type asked for");
        got.entry(job_type).or_default().push((job.id, job.token));
    }
    for list in got.values_mut() {
        list.sort();
    }
    let oldest = |t: &str, n: usize, token: i64| -> Vec<(JobId, i64)> {
        ids[t][..n].iter().map(|id| (*id, token)).collect()
    };
    assert_eq!(got["a"], oldest("a", 2, 10));
    assert_eq!(got["b"], oldest("b", 2, 20));
    assert_eq!(got["c"], oldest("c", 1, 30), "five in all, c last");
    let leased = s.job_get(ids["b"][0]).await.unwrap().unwrap();
    assert_eq!(leased.state, JobState::Running);
    assert_eq!(leased.lease_expires_at, Some(T0.plus(99 * SECOND)));
    let counts = s.counts().await.unwrap();
    assert_eq!((counts.running, counts.queued), (5, 4));
}

fn claim_wait(requests: Vec<ClaimRequest>, total: usize) -> ClaimWait {
    ClaimWait {
        owner: "waiter".into(),
        requests: requests
            .into_iter()
            .map(|r| ClaimRequest {
                owner: "waiter".into(),
                ..r
            })
            .collect(),
        total,
    }
}

/// Starts `wait` and returns it once the store has it parked: one poll
/// sends the request, and a later write (a promotion that finds nothing)
/// returns only after the writer has taken the request in.
async fn parked(
    s: &Arc<dyn Store>,
    wait: ClaimWait,
) -> tokio::task::JoinHandle<StoreResult<Vec<ClaimedJob>>> {
    let (sent_tx, sent) = tokio::sync::oneshot::channel();
    let store = s.clone();
    let waiter = tokio::spawn(async move {
        let mut claim = std::pin::pin!(store.job_claim_wait(wait));
        tokio::select! {
            biased;
            _ = &mut claim => panic!("nothing is ready: the claim must wait"),
            () = std::future::ready(()) => {}
        }
        sent_tx.send(()).unwrap();
        claim.await
    });
    sent.await.unwrap();
    assert_eq!(s.job_promote(T0).await.unwrap(), Vec::<Moved>::new());
    waiter
}

/// Whether `waiter` has finished, without waiting for it.
async fn finished<T>(waiter: &mut tokio::task::JoinHandle<T>) -> bool {
    tokio::task::yield_now().await;
    waiter.is_finished()
}

/// What a waiting claim got; a claim never served fails the test instead
/// of hanging it.
async fn served(waiter: tokio::task::JoinHandle<StoreResult<Vec<ClaimedJob>>>) -> Vec<ClaimedJob> {
    tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiting claim was never served")
        .unwrap()
        .unwrap()
}

/// A claim that finds nothing waits; the enqueue that readies its type
/// leases the job in its own transaction, starting the lease then.
pub async fn a_waiting_claim_is_served_by_the_enqueue_that_readies_its_type(s: Arc<dyn Store>) {
    let wait = claim_wait(vec![claim_req("a", 5, 7, T0)], 5);
    if !s.parks_claims() {
        assert!(s.job_claim_wait(wait).await.unwrap().is_empty());
        return;
    }
    let mut waiter = parked(&s, wait).await;
    let later = T0.plus(10 * SECOND);
    let other = match s.job_insert(new_job("b", None), later).await.unwrap() {
        Enqueued::Created { id, .. } => id,
        e => panic!("{e:?}"),
    };
    assert!(
        !finished(&mut waiter).await,
        "a job of another type must not serve the claim"
    );
    let id = match s.job_insert(new_job("a", None), later).await.unwrap() {
        Enqueued::Created { id, .. } => id,
        e => panic!("{e:?}"),
    };
    let jobs = served(waiter).await;
    assert_eq!(
        jobs.iter()
            .map(|j| (j.id, j.attempt, j.token))
            .collect::<Vec<_>>(),
        [(id, 1, 7)]
    );
    let job = s.job_get(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.lease_expires_at, Some(later.plus(30 * SECOND)));
    let events = s.job_events(id).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.from, e.to, e.at))
            .collect::<Vec<_>>(),
        [
            (None, JobState::Queued, later),
            (Some(JobState::Queued), JobState::Running, later)
        ]
    );
    assert_eq!(state(&*s, other).await, JobState::Queued);

    // Several types, at most `total` jobs, in the order of the requests.
    let wait = claim_wait(vec![claim_req("c", 5, 8, T0), claim_req("d", 5, 9, T0)], 3);
    let waiter = parked(&s, wait).await;
    let batch = ["d", "c", "d", "c"].map(|t| new_job(t, None)).to_vec();
    s.job_insert_batch(batch, later).await.unwrap();
    let jobs = served(waiter).await;
    assert_eq!(
        jobs.iter().map(|j| j.job_type.as_str()).collect::<Vec<_>>(),
        ["c", "c", "d"]
    );
    assert_eq!(s.counts().await.unwrap().queued, 2, "b and one d");
}

/// Unparking ends a waiting claim with nothing, and it leases nothing later.
pub async fn an_unparked_claim_returns_nothing_and_leases_nothing(s: Arc<dyn Store>) {
    if !s.parks_claims() {
        return; // job_claim_wait returns at once: covered above
    }
    let waiter = parked(&s, claim_wait(vec![claim_req("a", 5, 7, T0)], 5)).await;
    s.claim_unpark("someone-else").await.unwrap();
    s.claim_unpark("waiter").await.unwrap();
    assert!(served(waiter).await.is_empty());
    let id = insert(&*s, new_job("a", None)).await;
    assert_eq!(state(&*s, id).await, JobState::Queued);

    // An unpark that overtakes its claim ends that claim when it comes...
    s.claim_unpark("waiter").await.unwrap();
    let early = tokio::time::timeout(
        Duration::from_secs(30),
        s.job_claim_wait(claim_wait(vec![claim_req("b", 5, 8, T0)], 5)),
    )
    .await
    .expect("the earlier unpark ends the claim");
    assert!(early.unwrap().is_empty());
    // ...and only that one: the next waits, and is served.
    let waiter = parked(&s, claim_wait(vec![claim_req("b", 5, 9, T0)], 5)).await;
    let id = insert(&*s, new_job("b", None)).await;
    let jobs = served(waiter).await;
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [id]);
}

pub async fn closed_store_refuses_work(s: &dyn Store) {
    s.close().await;
    assert!(matches!(
        s.job_insert(new_job("email", None), T0).await,
        Err(StoreError::Closed)
    ));
}

/// A history as the schema before interned names wrote it (actor and
/// plugin digest spelled out in every event), for the upgrade test: three
/// jobs (succeeded; retried, then reaped into the DLQ; still queued) and
/// their ten events. Literal SQL that both backends read alike.
pub(crate) const HISTORY_BEFORE_NAMES: &str = "
    INSERT INTO jobs (id, job_type, state, payload, attempt, max_attempts, run_at, last_error,
                      result, plugin_digest, created_at, updated_at, started_at, finished_at)
    VALUES (1, 'email', 'succeeded', '{\"a\":1}', 1, 3, 100, NULL, '{\"sent\":true}',
            'sha256:aaaa', 100, 300, 200, 300),
           (2, 'email', 'dead', '{\"a\":2}', 2, 2, 400, 'lease expired', NULL,
            'sha256:aaaa', 100, 600, 500, 600),
           (3, 'sms', 'queued', '{}', 0, 3, 100, NULL, NULL, NULL, 100, 100, NULL, NULL);
    INSERT INTO job_events (id, job_id, at, from_state, to_state, attempt, actor, reason,
                            plugin_digest)
    VALUES (1, 1, 100, NULL, 'queued', 0, 'api', 'enqueued', NULL),
           (2, 2, 100, NULL, 'queued', 0, 'api', 'enqueued', NULL),
           (3, 3, 100, NULL, 'queued', 0, 'api', 'enqueued', NULL),
           (4, 1, 200, 'queued', 'running', 1, 'worker:host-a', NULL, 'sha256:aaaa'),
           (5, 2, 200, 'queued', 'running', 1, 'worker:host-a', NULL, 'sha256:aaaa'),
           (6, 1, 300, 'running', 'succeeded', 1, 'worker:host-a', NULL, 'sha256:aaaa'),
           (7, 2, 300, 'running', 'scheduled', 1, 'worker:host-a', 'boom', 'sha256:bbbb'),
           (8, 2, 400, 'scheduled', 'queued', 1, 'promoter', 'due', NULL),
           (9, 2, 500, 'queued', 'running', 2, 'worker:host-b', NULL, 'sha256:aaaa'),
           (10, 2, 600, 'running', 'dead', 2, 'reaper', 'lease expired', NULL)";

/// The host's own actors as the migrations number them.
pub(crate) fn host_actors() -> Vec<(i64, String)> {
    use crate::store::history::*;
    [
        API_ACTOR,
        RELEASE_ACTOR,
        REAP_ACTOR,
        PROMOTE_ACTOR,
        OPERATOR_ACTOR,
    ]
    .iter()
    .map(|a| (a.id, a.name.to_owned()))
    .collect()
}

/// After [`HISTORY_BEFORE_NAMES`] and the migration to interned names: every
/// job and event reads back as it was written, and new events name old and
/// new workers and plugin versions alike.
pub async fn a_history_from_before_names_reads_back_unchanged(s: &dyn Store) {
    let event = |at: i64,
                 from: Option<JobState>,
                 to: JobState,
                 attempt: u32,
                 actor: &str,
                 reason: Option<&str>,
                 digest: Option<&str>| crate::job::JobEvent {
        at: Timestamp(at),
        from,
        to,
        attempt,
        actor: actor.into(),
        reason: reason.map(Into::into),
        plugin_digest: digest.map(Into::into),
    };
    use JobState::*;
    let enqueued = || event(100, None, Queued, 0, "api", Some("enqueued"), None);
    assert_eq!(
        s.job_events(1).await.unwrap(),
        vec![
            enqueued(),
            event(
                200,
                Some(Queued),
                Running,
                1,
                "worker:host-a",
                None,
                Some("sha256:aaaa")
            ),
            event(
                300,
                Some(Running),
                Succeeded,
                1,
                "worker:host-a",
                None,
                Some("sha256:aaaa")
            ),
        ]
    );
    assert_eq!(
        s.job_events(2).await.unwrap(),
        vec![
            enqueued(),
            event(
                200,
                Some(Queued),
                Running,
                1,
                "worker:host-a",
                None,
                Some("sha256:aaaa")
            ),
            event(
                300,
                Some(Running),
                Scheduled,
                1,
                "worker:host-a",
                Some("boom"),
                Some("sha256:bbbb")
            ),
            event(
                400,
                Some(Scheduled),
                Queued,
                1,
                "promoter",
                Some("due"),
                None
            ),
            event(
                500,
                Some(Queued),
                Running,
                2,
                "worker:host-b",
                None,
                Some("sha256:aaaa")
            ),
            event(
                600,
                Some(Running),
                Dead,
                2,
                "reaper",
                Some("lease expired"),
                None
            ),
        ]
    );
    assert_eq!(s.job_events(3).await.unwrap(), vec![enqueued()]);
    let done = s.job_get(1).await.unwrap().unwrap();
    assert_eq!(
        (
            done.state,
            done.result.as_deref(),
            done.plugin_digest.as_deref()
        ),
        (Succeeded, Some(r#"{"sent":true}"#), Some("sha256:aaaa"))
    );
    let dead = s.job_get(2).await.unwrap().unwrap();
    assert_eq!((dead.state, dead.attempt), (Dead, 2));
    assert_eq!(s.counts().await.unwrap().dead, 1);

    // The upgraded store goes on: the queued job and a new one are claimed
    // by a worker the history already knows, on a version it knows, and one
    // completes from a new worker on a new version.
    let fresh = insert(s, new_job("sms", None)).await;
    let mut req = claim_req("sms", 10, 77, T0);
    req.owner = "host-a".into();
    req.plugin_digest = "sha256:bbbb".into();
    let claimed = s.job_claim(req).await.unwrap();
    assert_eq!(
        claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![3, fresh]
    );
    for job in &claimed {
        let mut c = completion(job, Outcome::Succeeded { result: None }, T0.plus(SECOND));
        c.owner = "host-c".into();
        c.plugin_digest = "sha256:cccc".into();
        assert!(s.job_complete(c).await.unwrap());
    }
    let at = T0.plus(SECOND).as_micros();
    for id in [3, fresh] {
        let events = s.job_events(id).await.unwrap();
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(
            events[1..],
            [
                event(
                    T0.as_micros(),
                    Some(Queued),
                    Running,
                    1,
                    "worker:host-a",
                    None,
                    Some("sha256:bbbb")
                ),
                event(
                    at,
                    Some(Running),
                    Succeeded,
                    1,
                    "worker:host-c",
                    None,
                    Some("sha256:cccc")
                ),
            ]
        );
    }
}

/// Instantiates the whole suite for one backend. `$make` is an async
/// expression yielding `(store, guard)`; the guard keeps its resources alive.
#[macro_export]
macro_rules! store_contract_tests {
    ($make:expr) => {
        use std::sync::Arc;
        use $crate::store::Store;
        use $crate::store::contract as c;

        macro_rules! scenario {
            ($name:ident) => {
                #[tokio::test]
                async fn $name() {
                    let (store, _guard) = $make.await;
                    c::$name(&store).await;
                }
            };
            ($name:ident, shared) => {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _guard) = $make.await;
                    let store: Arc<dyn Store> = Arc::new(store);
                    c::$name(store).await;
                }
            };
        }

        scenario!(insert_then_get);
        scenario!(idempotency_key_names_one_job_per_type);
        scenario!(batch_insert_creates_all_in_order);
        scenario!(concurrent_inserts_all_commit, shared);
        scenario!(delayed_jobs_wait_for_the_promoter);
        scenario!(a_claim_sees_every_way_a_job_becomes_ready);
        scenario!(claim_takes_oldest_due_of_one_type_and_counts_the_attempt);
        scenario!(claims_take_the_highest_priority_first_fifo_within_one);
        scenario!(a_claim_for_several_types_takes_each_up_to_its_limit);
        scenario!(concurrent_claims_hand_each_job_to_one_claimer, shared);
        scenario!(a_failing_write_fails_alone, shared);
        scenario!(concurrent_completions_apply_once_each, shared);
        scenario!(completion_is_fenced_by_the_lease_token);
        scenario!(retry_schedules_and_dead_records_the_error);
        scenario!(reaper_requeues_expired_leases_and_fences_out_the_late_holder);
        scenario!(reaper_sends_an_expired_last_attempt_to_the_dlq);
        scenario!(release_returns_the_job_without_spending_the_attempt);
        scenario!(replay_moves_only_dead_jobs_with_a_fresh_budget);
        scenario!(cancel_withdraws_waiting_and_running_jobs);
        scenario!(counts_per_state_and_type);
        scenario!(the_listing_pages_newest_first);
        scenario!(paused_types_are_kept_until_resumed);
        scenario!(a_bulk_replay_moves_the_dead_jobs_it_picks);
        scenario!(a_prune_deletes_only_old_finished_jobs);
        scenario!(schedules_are_kept_and_advance_once_per_tick);
        scenario!(kv_keeps_each_scope_apart_and_sets_once);
        scenario!(kv_set_if_absent_has_one_winner, shared);
        scenario!(kv_calls_see_every_write_before_them);
        scenario!(progress_is_fenced_by_the_lease_and_cleared_by_a_new_attempt);
        scenario!(
            a_waiting_claim_is_served_by_the_enqueue_that_readies_its_type,
            shared
        );
        scenario!(an_unparked_claim_returns_nothing_and_leases_nothing, shared);
        scenario!(closed_store_refuses_work);
    };
}

/// The suite on PostgreSQL: each test in a database of its own.
mod postgres {
    use crate::store::postgres::{MIGRATOR, PgStore};
    use crate::store::{Outcome, StateCounts};
    use crate::testing::TestDb;

    crate::store_contract_tests!(crate::testing::postgres_store());

    /// A count of the jobs table, per type and state.
    async fn counted(url: &str) -> Vec<(String, StateCounts)> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT job_type, state, COUNT(*) FROM jobs GROUP BY job_type, state ORDER BY job_type",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        crate::store::counts_per_type(
            rows.into_iter()
                .map(|(t, state, n)| (t, state.parse().unwrap(), n as u64)),
        )
    }

    /// PostgreSQL-specific: every statement that finds jobs by id goes
    /// through the primary key, whatever the statistics say, on the
    /// connections the store runs them on.
    ///
    /// Two cases have been seen. A plan made while `jobs` was empty and
    /// never analyzed (a new database, a server without autovacuum) hashed
    /// the whole table for every batch of completions, and each connection
    /// kept that plan: 1.1 ms a completion after 5,000 jobs, growing with
    /// the table. Statistics taken while no job ran (or was dead) made a
    /// partial index such as `jobs_leased` look empty, and a plan that scans
    /// all of it for each id look cheapest: once 190,000 jobs were running,
    /// that plan took up to 47 s for one batch of 1,024 completions in the
    /// `prune` scenario (24 s under EXPLAIN ANALYZE), and their leases
    /// expired meanwhile.
    #[tokio::test]
    async fn statements_by_id_use_the_primary_key_whatever_the_statistics() {
        use sqlx::{Connection, Row};
        /// Each statement's generic plan (the one a connection keeps).
        async fn plans(
            conn: &mut sqlx::PgConnection,
            statements: &[&'static str],
        ) -> Vec<(&'static str, String)> {
            sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
                .execute(&mut *conn)
                .await
                .unwrap();
            let mut plans = Vec::new();
            for (n, sql) in statements.iter().enumerate() {
                let params = (1..)
                    .take_while(|i| sql.contains(&format!("${i}")))
                    .map(|_| "NULL")
                    .collect::<Vec<_>>()
                    .join(", ");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE s{n} AS {sql}")))
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "EXPLAIN EXECUTE s{n}({params})"
                )))
                .fetch_all(&mut *conn)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DEALLOCATE s{n}")))
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                plans.push((*sql, plan.join("\n")));
            }
            plans
        }
        let by_the_key = |plans: Vec<(&str, String)>| {
            for (sql, plan) in plans {
                assert!(
                    plan.contains("jobs_pkey")
                        && !plan.contains("Seq Scan on jobs")
                        && !plan.contains("jobs_leased")
                        && !plan.contains("jobs_dead"),
                    "{sql}\n{plan}"
                );
            }
        };
        let (store, db) = crate::testing::postgres_store().await;
        let mut by_id = store.by_id_pool().acquire().await.unwrap();
        let mut plain = sqlx::PgConnection::connect(&db.url).await.unwrap();

        let by_id_statements = &crate::store::postgres::BY_ID;
        // A new database: `jobs` is empty and was never analyzed.
        let empty = plans(&mut plain, by_id_statements).await;
        assert!(
            empty
                .iter()
                .any(|(_, plan)| plan.contains("Seq Scan on jobs")),
            "without the store's planner settings, an empty table's plans scan it: {empty:?}"
        );
        by_the_key(plans(&mut by_id, by_id_statements).await);
        // The claim runs on the claims' pool, without those settings: it
        // finds its jobs through the ready index, and leases them by the key.
        let claim = crate::store::postgres::CLAIM;
        let (_, plan) = &plans(&mut plain, &[claim]).await[0];
        assert!(
            plan.contains("jobs_ready")
                && plan.contains("jobs_pkey")
                && !plan.contains("Seq Scan on jobs"),
            "{plan}"
        );

        // Statistics taken while every job was queued, then half of them
        // running and half dead.
        sqlx::raw_sql(
            "INSERT INTO jobs (job_type, state, payload, max_attempts, run_at, created_at, updated_at)
             SELECT 'email', 'queued', '{}', 3, g, g, g FROM generate_series(1, 20000) g;
             ANALYZE jobs;
             UPDATE jobs SET state = 'running', lease_owner = 'h', lease_token = 7,
                    lease_expires_at = 1 WHERE id <= 10000;
             UPDATE jobs SET state = 'dead', finished_at = 1 WHERE id > 10000;",
        )
        .execute(&mut plain)
        .await
        .unwrap();
        // They fence by the token alone: only a running job may have one.
        let kept = sqlx::query(
            "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL WHERE id = 1",
        )
        .execute(&mut plain)
        .await
        .unwrap_err()
        .to_string();
        assert!(kept.contains("jobs_lease_only_when_running"), "{kept}");
        by_the_key(plans(&mut by_id, by_id_statements).await);
        drop(by_id);
        store.close().await;
    }

    /// PostgreSQL-specific: a lone enqueue or completion is one statement
    /// without BEGIN and COMMIT. Sent on a pooled connection that the server
    /// ended while it sat idle (`pg_terminate_backend`, a restart), it is
    /// refused before it runs: the committer sends it again on a fresh
    /// connection, and it succeeds once, rather than being reported as
    /// perhaps committed.
    #[tokio::test]
    async fn a_lone_statement_on_a_connection_killed_in_the_pool_is_sent_again() {
        use sqlx::Connection;
        let (store, db) = crate::testing::postgres_store().await;
        let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let kill_the_pool = async |admin: &mut sqlx::PgConnection| {
            let killed: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
            )
            .fetch_one(admin)
            .await
            .unwrap();
            assert!(killed > 0, "the store had connections to kill");
        };
        let created = |e: crate::store::Enqueued| match e {
            crate::store::Enqueued::Created { id, .. } => id,
            existing => panic!("{existing:?}"),
        };
        // The committers' connections, pooled.
        let (a, b) = tokio::join!(
            store.job_insert(super::new_job("email", None), super::T0),
            store.job_insert(super::new_job("email", None), super::T0),
        );
        let first = [created(a.unwrap()), created(b.unwrap())];
        kill_the_pool(&mut admin).await;
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(created(
                store
                    .job_insert(super::new_job("email", None), super::T0)
                    .await
                    .expect("an enqueue refused before it ran is sent again"),
            ));
        }
        // A claim is not sent again (the worker claims again after its poll
        // interval): the dead connections of its pool fail one by one.
        let jobs = loop {
            match store
                .job_claim(super::claim_req("email", 10, 3, super::T0))
                .await
            {
                Err(e) if e.is_unavailable() => continue,
                claimed => break claimed.unwrap(),
            }
        };
        assert_eq!(jobs.len(), 6, "every job once");
        // The names a completion records (worker, plugin version) are looked
        // up once, on the claims' pool: looked up now, before the kill.
        let mut stale = super::completion(&jobs[0], Outcome::Succeeded { result: None }, super::T0);
        stale.token += 1;
        loop {
            match store.job_complete(stale.clone()).await {
                Err(e) if e.is_unavailable() => continue,
                applied => break assert!(!applied.unwrap(), "another lease's report"),
            }
        }
        kill_the_pool(&mut admin).await;
        for job in &jobs {
            let applied = store
                .job_complete(super::completion(
                    job,
                    Outcome::Succeeded { result: None },
                    super::T0,
                ))
                .await
                .expect("a completion refused before it ran is sent again");
            assert!(applied, "job {}", job.id);
        }
        let stored: Vec<(i64, String)> = sqlx::query_as("SELECT id, state FROM jobs ORDER BY id")
            .fetch_all(&mut admin)
            .await
            .unwrap();
        let mut expected: Vec<(i64, String)> = first
            .iter()
            .chain(&ids)
            .map(|id| (*id, "succeeded".to_owned()))
            .collect();
        expected.sort();
        assert_eq!(stored, expected);
        store.close().await;
    }

    /// A connection listening where the hosts hear of ready jobs.
    async fn listening(url: &str) -> sqlx::postgres::PgListener {
        let mut listener = sqlx::postgres::PgListener::connect(url).await.unwrap();
        listener
            .listen(crate::store::postgres::READY_CHANNEL)
            .await
            .unwrap();
        listener
    }

    /// What `listener` heard before a notification the test sends now: the
    /// channel keeps the order of the commits, so that is everything the
    /// test's writes sent.
    async fn heard_before_the_end(
        url: &str,
        listener: &mut sqlx::postgres::PgListener,
    ) -> Vec<String> {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query("SELECT pg_notify($1, 'end')")
            .bind(crate::store::postgres::READY_CHANNEL)
            .execute(&mut admin)
            .await
            .unwrap();
        let mut heard = Vec::new();
        loop {
            let n = tokio::time::timeout(std::time::Duration::from_secs(30), listener.recv())
                .await
                .expect("the notifications arrive")
                .unwrap();
            if n.payload() == "end" {
                return heard;
            }
            heard.push(n.payload().to_owned());
        }
    }

    /// PostgreSQL-specific: an enqueue that makes a job ready tells every
    /// host (`NOTIFY jobhost_ready`, sent by the statement that creates the
    /// job, delivered when it commits); one that only schedules a job, or
    /// finds its idempotency key taken, does not.
    #[tokio::test]
    async fn an_enqueue_that_readies_a_job_notifies_the_hosts() {
        let (store, db) = crate::testing::postgres_store().await;
        let mut listener = listening(&db.url).await;
        let mut later = super::new_job("email", None);
        later.run_at = super::T0.plus(60 * super::SECOND);
        store.job_insert(later.clone(), super::T0).await.unwrap();
        // Alone: one statement in a transaction of its own.
        store
            .job_insert(super::new_job("email", None), super::T0)
            .await
            .unwrap();
        store
            .job_insert(super::new_job("email", Some("k")), super::T0)
            .await
            .unwrap();
        store
            .job_insert(super::new_job("email", Some("k")), super::T0)
            .await
            .unwrap();
        store
            .job_insert_batch(
                vec![
                    later,
                    super::new_job("email", None),
                    super::new_job("email", Some("j")),
                ],
                super::T0,
            )
            .await
            .unwrap();
        let heard = heard_before_the_end(&db.url, &mut listener).await;
        // The ready job alone, the new key, the batch (folded into one).
        assert_eq!(heard.len(), 3, "{heard:?}");
        store.close().await;
    }

    /// PostgreSQL-specific: a claim of several types that locks more jobs
    /// than its total lets it lease lets the rest go and tells the hosts,
    /// whose claims skipped them while they were locked; one that leases
    /// all it locked does not.
    #[tokio::test]
    async fn a_claim_that_lets_locked_jobs_go_notifies_the_hosts() {
        let (store, db) = crate::testing::postgres_store().await;
        for job_type in ["a", "a", "b", "b"] {
            super::insert(&store, super::new_job(job_type, None)).await;
        }
        let mut listener = listening(&db.url).await;
        let both = |total| {
            super::claim_wait(
                vec![
                    super::claim_req("a", 2, 1, super::T0),
                    super::claim_req("b", 2, 2, super::T0),
                ],
                total,
            )
        };
        let first = store.job_claim_wait(both(2)).await.unwrap();
        assert!(first.iter().all(|j| j.job_type == "a"), "{first:?}");
        let second = store.job_claim_wait(both(10)).await.unwrap();
        assert!(second.iter().all(|j| j.job_type == "b"), "{second:?}");
        assert_eq!((first.len(), second.len()), (2, 2));
        let heard = heard_before_the_end(&db.url, &mut listener).await;
        assert_eq!(
            heard.len(),
            1,
            "the first claim let b's jobs go; the second none"
        );
        store.close().await;
    }

    /// PostgreSQL-specific: the counters every write keeps (a trigger on
    /// `jobs`) match a count of the table after every kind of transition,
    /// including two stores writing at once.
    #[tokio::test]
    async fn kept_counts_match_the_table() {
        let (store, db) = crate::testing::postgres_store().await;
        let other = PgStore::open(&db.url, Default::default()).await.unwrap();
        super::a_claim_sees_every_way_a_job_becomes_ready(&store).await;
        super::cancel_withdraws_waiting_and_running_jobs(&other).await;
        super::retry_schedules_and_dead_records_the_error(&store).await;
        super::reaper_sends_an_expired_last_attempt_to_the_dlq(&other).await;
        // Two stores (two hosts) enqueue, claim and complete the same type at
        // once: their counter updates must neither collide nor be lost.
        let hammer = |s: Arc<PgStore>, token: i64| async move {
            for round in 0..20 {
                let jobs = (0..40).map(|_| super::new_job("z", None)).collect();
                s.job_insert_batch(jobs, super::T0).await.unwrap();
                let claimed = s
                    .job_claim(super::claim_req("z", 30, token * 100 + round, super::T0))
                    .await
                    .unwrap();
                let mut done = tokio::task::JoinSet::new();
                for (i, job) in claimed.into_iter().enumerate() {
                    let outcome = match i % 3 {
                        0 => Outcome::Succeeded { result: None },
                        1 => Outcome::Retry {
                            error: "again".into(),
                            run_at: super::T0.plus(super::SECOND),
                        },
                        _ => Outcome::Dead { error: "no".into() },
                    };
                    let s = s.clone();
                    done.spawn(async move {
                        s.job_complete(super::completion(&job, outcome, super::T0))
                            .await
                    });
                }
                while let Some(applied) = done.join_next().await {
                    assert!(applied.unwrap().unwrap());
                }
            }
        };
        let (store, other) = (Arc::new(store), Arc::new(other));
        tokio::join!(hammer(store.clone(), 1), hammer(other.clone(), 2));
        let dead: i64 = {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar("SELECT MIN(id) FROM jobs WHERE job_type = 'z' AND state = 'dead'")
                .fetch_one(&mut conn)
                .await
                .unwrap()
        };
        store.job_replay(dead, super::T0).await.unwrap();
        let kept = store.counts_by_type().await.unwrap();
        let all = store.counts().await.unwrap();
        let counted = counted(&db.url).await;
        assert!(counted.len() >= 2, "the scenarios used several types");
        assert_eq!(kept, counted);
        assert_eq!(all, counted.iter().map(|(_, c)| c).sum());
    }

    /// A database written before the history's names were interned
    /// (migration 11) reads back unchanged after it, and goes on working;
    /// the host's own actors have the ids the code writes.
    #[tokio::test]
    async fn a_history_from_before_names_is_upgraded() {
        use sqlx::Connection;
        let db = TestDb::create().await;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let before = sqlx::migrate::Migrator {
            migrations: MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < 11)
                .cloned()
                .collect::<Vec<_>>()
                .into(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before.run(&mut conn).await.unwrap();
        sqlx::raw_sql(super::HISTORY_BEFORE_NAMES)
            .execute(&mut conn)
            .await
            .unwrap();
        // The rows above were given their ids; later ones follow them.
        sqlx::raw_sql("SELECT setval('jobs_id_seq', 3); SELECT setval('job_events_id_seq', 10);")
            .execute(&mut conn)
            .await
            .unwrap();
        let store = PgStore::open(&db.url, Default::default()).await.unwrap();
        super::a_history_from_before_names_reads_back_unchanged(&store).await;
        let actors: Vec<(i32, String)> =
            sqlx::query_as("SELECT id, name FROM event_actors WHERE id <= 5 ORDER BY id")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let actors: Vec<(i64, String)> = actors
            .into_iter()
            .map(|(id, n)| (i64::from(id), n))
            .collect();
        assert_eq!(actors, super::host_actors());
    }

    /// PostgreSQL-specific: a database whose jobs predate the counters gets
    /// them counted when it is migrated.
    #[tokio::test]
    async fn the_counters_start_from_the_jobs_already_there() {
        use sqlx::Connection;
        let db = TestDb::create().await;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let first = sqlx::migrate::Migrator {
            migrations: MIGRATOR.migrations[..1].to_vec().into(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        first.run(&mut conn).await.unwrap();
        sqlx::query(
            "INSERT INTO jobs (job_type, state, payload, max_attempts, run_at, created_at, updated_at)
             SELECT t, s, '{}', 3, 0, 0, 0
             FROM unnest(ARRAY['a', 'a', 'a', 'b'], ARRAY['queued', 'queued', 'succeeded', 'dead'])
                  AS x(t, s)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let store = PgStore::open(&db.url, Default::default()).await.unwrap();
        let kept = store.counts_by_type().await.unwrap();
        assert_eq!(kept, counted(&db.url).await);
        assert_eq!(
            (kept[0].1.queued, kept[0].1.succeeded, kept[1].1.dead),
            (2, 1, 1)
        );
    }
}

mod sqlite {
    use crate::store::sqlite::{Durability, SqliteStore};

    crate::store_contract_tests!(crate::testing::sqlite_store());

    /// A store in a fresh file, with the file's URL (to reopen it, or to
    /// look inside with a connection of the test's own).
    async fn store_in_file() -> (SqliteStore, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let store = SqliteStore::open(&url, Durability::Full).await.unwrap();
        (store, url, dir)
    }

    /// A file written before the history's names were interned (migration
    /// 9) reads back unchanged after it, and goes on working; the host's
    /// own actors have the ids the code writes.
    #[tokio::test]
    async fn a_history_from_before_names_is_upgraded() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        let before = sqlx::migrate::Migrator {
            migrations: crate::store::sqlite::MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < 9)
                .cloned()
                .collect::<Vec<_>>()
                .into(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before.run(&mut conn).await.unwrap();
        sqlx::raw_sql(super::HISTORY_BEFORE_NAMES)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let store = SqliteStore::open(&url, Durability::Full).await.unwrap();
        super::a_history_from_before_names_reads_back_unchanged(&store).await;
        store.close().await;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let actors: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, name FROM event_actors WHERE id <= 5 ORDER BY id")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(actors, super::host_actors());
    }

    /// The writer opens the file itself: an in-memory database would give it
    /// a database of its own, apart from the readers', so it is refused.
    #[tokio::test]
    async fn an_in_memory_database_is_refused_with_a_clear_error() {
        for url in ["sqlite::memory:", "sqlite://:memory:"] {
            let err = match SqliteStore::open(url, Durability::Full).await {
                Ok(_) => panic!("{url} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains("not an in-memory database"), "{url}: {err}");
        }
    }

    /// SQLite-specific: one process owns the file; a second store on it is
    /// refused with a clear error until the first is closed.
    #[tokio::test]
    async fn a_second_owner_of_the_file_is_refused() {
        let (store, url, _dir) = store_in_file().await;
        let err = match SqliteStore::open(&url, Durability::Full).await {
            Ok(_) => panic!("a second store opened the same file"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("another jobhost process has this database open"),
            "{err}"
        );
        store.close().await;
        let reopened = SqliteStore::open(&url, Durability::Full).await.unwrap();
        reopened.close().await;
    }

    /// SQLite-specific: the writer does not check the events' foreign key
    /// per row; every path that writes events must still leave none dangling.
    #[tokio::test]
    async fn no_event_names_a_missing_job() {
        use sqlx::Connection;
        let (store, url, _dir) = store_in_file().await;
        super::a_claim_sees_every_way_a_job_becomes_ready(&store).await;
        super::cancel_withdraws_waiting_and_running_jobs(&store).await;
        store.close().await;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_events")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(events > 20, "the scenarios wrote events ({events})");
        let dangling = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert!(
            dangling.is_empty(),
            "{} events name a missing job",
            dangling.len()
        );
    }

    /// SQLite-specific: key-value calls are answered before the writer
    /// commits them; once `kv_durable` returns, every one is in the file (read
    /// here by a connection of the test's own), with the value last written;
    /// a store opened again knows every key the file holds.
    #[tokio::test]
    async fn answered_kv_writes_are_in_the_file_once_durable() {
        use crate::store::{KvWrite, Store};
        use sqlx::Connection;
        let (store, url, _dir) = store_in_file().await;
        for n in 0..2000 {
            let value = KvWrite::SetIfAbsent(format!("v{n}").into_bytes());
            assert!(store.kv_write("p", &format!("k{n}"), value).await.unwrap());
            let last = KvWrite::Set(format!("last{n}").into_bytes());
            assert!(store.kv_write("p", "last", last).await.unwrap());
        }
        store.kv_durable().await.unwrap();
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM plugin_kv WHERE scope = 'p'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(rows, 2001);
        let last: Vec<u8> =
            sqlx::query_scalar("SELECT value FROM plugin_kv WHERE scope = 'p' AND key = 'last'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(last, b"last1999");
        // Nothing is waiting any more: answered from the file.
        assert_eq!(store.kv_get("p", "k7").await.unwrap(), Some(b"v7".to_vec()));
        // A store opened on the file knows its keys from the start.
        store.close().await;
        let store = SqliteStore::open(&url, Durability::Full).await.unwrap();
        let again = KvWrite::SetIfAbsent(b"again".to_vec());
        assert!(!store.kv_write("p", "k7", again.clone()).await.unwrap());
        assert_eq!(store.kv_get("p", "k7").await.unwrap(), Some(b"v7".to_vec()));
        assert!(store.kv_write("p", "k7", KvWrite::Delete).await.unwrap());
        assert!(store.kv_write("p", "k7", again).await.unwrap());
        assert!(
            store
                .kv_write("p", "new", KvWrite::Delete)
                .await
                .is_ok_and(|d| !d)
        );
    }

    /// SQLite-specific: the writer keeps the counts as it commits; after
    /// every kind of transition they match a count of the table, and a
    /// reopened store counts the same.
    #[tokio::test]
    async fn kept_counts_match_the_table() {
        use crate::store::StateCounts;
        use sqlx::Connection;
        let (store, url, _dir) = store_in_file().await;
        super::a_claim_sees_every_way_a_job_becomes_ready(&store).await;
        super::cancel_withdraws_waiting_and_running_jobs(&store).await;
        super::retry_schedules_and_dead_records_the_error(&store).await;
        super::reaper_sends_an_expired_last_attempt_to_the_dlq(&store).await;
        let kept = store.counts_by_type().await.unwrap();
        let total = store.counts().await.unwrap();
        store.close().await;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT job_type, state, COUNT(*) FROM jobs GROUP BY job_type, state ORDER BY job_type",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let counted = crate::store::counts_per_type(
            rows.into_iter()
                .map(|(t, state, n)| (t, state.parse().unwrap(), n as u64)),
        );
        let all: StateCounts = counted.iter().map(|(_, c)| c).sum();
        assert!(counted.len() >= 2, "the scenarios used several types");
        assert!(all.queued + all.running + all.succeeded + all.dead + all.cancelled > 0);
        assert_eq!(kept, counted);
        assert_eq!(total, all);
        let reopened = SqliteStore::open(&url, Durability::Full).await.unwrap();
        assert_eq!(reopened.counts_by_type().await.unwrap(), counted);
    }

    /// SQLite-specific: when a batch fails and its commands are applied one
    /// by one, an enqueue among them still serves a parked claim. (One
    /// thread: both enqueues reach the writer before it runs, so they share
    /// a batch.)
    #[tokio::test]
    async fn a_failed_batch_replayed_alone_still_serves_parked_claims() {
        use crate::store::{Enqueued, NewJob};
        let (store, _guard) = crate::testing::sqlite_store().await;
        let s: Arc<dyn Store> = Arc::new(store);
        let waiter = super::parked(
            &s,
            super::claim_wait(vec![super::claim_req("a", 5, 7, super::T0)], 5),
        )
        .await;
        let bad = NewJob {
            max_attempts: 0, // refused by the table's CHECK: fails the batch
            ..super::new_job("a", None)
        };
        let (good, bad) = tokio::join!(
            s.job_insert(super::new_job("a", None), super::T0),
            s.job_insert(bad, super::T0)
        );
        assert!(bad.is_err());
        let Enqueued::Created { id, .. } = good.unwrap() else {
            panic!("a new job")
        };
        let jobs = super::served(waiter).await;
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [id]);
    }

    /// SQLite-specific: under writes that never pause, the WAL is still
    /// copied into the database and started over, so it stays small. (A
    /// passive checkpoint alone cannot rewind it while writes keep coming:
    /// the WAL grew to gigabytes in a benchmark before the writer restarted
    /// it.)
    #[tokio::test]
    async fn the_wal_stays_bounded_under_writes_that_never_pause() {
        use crate::store::NewJob;
        const LIMIT_FRAMES: i64 = 64;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let url = format!("sqlite://{}", path.display());
        let store = SqliteStore::open_with(&url, Durability::Full, LIMIT_FRAMES)
            .await
            .unwrap();
        let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200));
        let wal = dir.path().join("jobs.db-wal");
        let wal_len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        // Some 30 MiB of pages in all, written back to back for over a
        // second, so the checkpointer looks several times mid-stream.
        let (mut written, mut largest) = (0u64, 0u64);
        let began = std::time::Instant::now();
        while written < 30 << 20 || began.elapsed() < std::time::Duration::from_secs(2) {
            let jobs = (0..500)
                .map(|_| NewJob {
                    payload: payload.clone(),
                    ..super::new_job("a", None)
                })
                .collect();
            store.job_insert_batch(jobs, super::T0).await.unwrap();
            written += 500 * 300;
            largest = largest.max(wal_len());
        }
        let done = wal_len();
        assert!(
            done < written / 4,
            "the WAL holds {done} bytes after {written} bytes of jobs (largest seen {largest})"
        );
        store.close().await;
    }

    /// SQLite-specific: a committed job is in the file, not in memory.
    #[tokio::test]
    async fn committed_jobs_survive_reopening_the_file() {
        let (store, url, _dir) = store_in_file().await;
        let id = super::insert(&store, super::new_job("email", Some("k"))).await;
        drop(store);
        let reopened = SqliteStore::open(&url, Durability::Full).await.unwrap();
        let job = reopened.job_get(id).await.unwrap().expect("job survived");
        assert_eq!(job.idempotency_key.as_deref(), Some("k"));
        assert_eq!(reopened.counts().await.unwrap().queued, 1);
    }
}
