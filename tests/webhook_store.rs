//! The webhook delivery stores against one contract.
//!
//! Every scenario of the [`DeliveryStore`] contract runs on both stores:
//! `journal::<scenario>` (the embedded journal, a file in a temp dir) and
//! `postgres::<scenario>` (a migrated database of its own, two store
//! instances standing for two nodes). After them, what only PostgreSQL
//! does: the migration, and senders on two nodes leasing at once. What only
//! the journal does (its file: torn lines, compaction, one owning process,
//! a restart dropping the leases) is tested beside it, in
//! `src/webhooks/journal.rs`.
//!
//! The database comes from [`common::pg::TestDb`]: `FLEXGATE_TEST_PG` names
//! the server; unreachable, the PostgreSQL tests are skipped with a loud
//! message, except under `CI=true`, where they fail.

mod common;

use common::pg::TestDb;
use flexgate::store::migrate::{self, MigrationReport, SCHEMA_VERSION};
use flexgate::store::StoreError;
use flexgate::webhooks::delivery::{
    Delivery, DeliveryQuery, DeliveryStatus, DeliveryStore, KEEP_FINISHED, KEEP_FINISHED_MS,
    ORPHAN_GRACE_MS,
};
use flexgate::webhooks::journal::{JournalStore, FILE_NAME};
use flexgate::webhooks::pg_store::PgDeliveryStore;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// Far from the database's clock: every time below is the caller's.
const T0: u64 = 1_900_000_000_000;

// ---- the stores under test ----

/// One store under test, as the scenarios see it.
struct Subject {
    /// A node's store.
    a: Arc<dyn DeliveryStore>,
    /// Another node's, on the same data: for PostgreSQL a store on a pool
    /// of its own (as another process would be); for the journal the same
    /// store (one process owns the file).
    b: Arc<dyn DeliveryStore>,
    backend: Backend,
}

enum Backend {
    Journal(tempfile::TempDir),
    Postgres(TestDb),
}

impl Subject {
    fn journal() -> Subject {
        let dir = tempfile::tempdir().unwrap();
        Subject::open_journal(dir)
    }

    fn open_journal(dir: tempfile::TempDir) -> Subject {
        let store = JournalStore::open(&dir.path().join(FILE_NAME)).expect("open the journal");
        let a: Arc<dyn DeliveryStore> = Arc::new(store);
        Subject {
            b: a.clone(),
            a,
            backend: Backend::Journal(dir),
        }
    }

    /// `None`: the test is skipped (no PostgreSQL, outside CI).
    async fn postgres() -> Option<Subject> {
        let db = TestDb::migrated().await?;
        Some(Subject::pg_nodes(db))
    }

    fn pg_nodes(db: TestDb) -> Subject {
        Subject {
            a: Arc::new(node(&db, "a")),
            b: Arc::new(node(&db, "b")),
            backend: Backend::Postgres(db),
        }
    }

    fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Journal(_) => "journal",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The stores again, as after a restart: the journal is read back from
    /// its file; PostgreSQL gets new nodes.
    fn restart(self) -> Subject {
        let Subject { a, b, backend } = self;
        // The journal's owner lets go of the file first.
        drop((a, b));
        match backend {
            Backend::Journal(dir) => Subject::open_journal(dir),
            Backend::Postgres(db) => Subject::pg_nodes(db),
        }
    }

    /// The database, for looking behind the store's back.
    fn pg(&self) -> Option<&TestDb> {
        match &self.backend {
            Backend::Postgres(db) => Some(db),
            Backend::Journal(_) => None,
        }
    }

    fn journal_file(&self) -> Option<PathBuf> {
        match &self.backend {
            Backend::Journal(dir) => Some(dir.path().join(FILE_NAME)),
            Backend::Postgres(_) => None,
        }
    }

    /// The lines of the journal file.
    fn journal_lines(&self) -> Option<usize> {
        let file = self.journal_file()?;
        Some(std::fs::read_to_string(file).unwrap().lines().count())
    }
}

/// A PostgreSQL node's store, on a pool of its own.
fn node(db: &TestDb, name: &str) -> PgDeliveryStore {
    PgDeliveryStore::new(db.pool(), name)
}

/// Runs each scenario on both stores: `journal::<scenario>` and
/// `postgres::<scenario>`.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod journal {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Subject::journal()).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(s) = super::Subject::postgres().await else {
                        return;
                    };
                    super::$scenario(s).await;
                }
            )*
        }
    };
}

on_both_stores!(
    enqueue_makes_one_delivery_per_event,
    leases_are_exclusive_until_they_expire,
    finish_releases_the_lease_and_replay_revives,
    the_log_pages_newest_first_with_filters,
    outcomes_track_since_when_a_subscription_fails,
    prune_keeps_recent_finished_and_live_subscriptions_only,
);

// ---- helpers ----

fn dlv(id: &str, webhook: &str, event: &str, created_ms: u64) -> Delivery {
    Delivery {
        id: id.into(),
        webhook_id: webhook.into(),
        event_id: event.into(),
        event_type: "upstream.down".into(),
        payload: format!(r#"{{"id":"{event}","type":"upstream.down","data":{{"ü":"☃"}}}}"#),
        status: DeliveryStatus::Pending,
        attempts: 0,
        created_ms,
        updated_ms: created_ms,
        next_attempt_ms: Some(created_ms),
        last_status: None,
        last_error: None,
        last_latency_ms: None,
        response_snippet: None,
    }
}

fn finished(mut d: Delivery, status: DeliveryStatus, at: u64) -> Delivery {
    d.status = status;
    d.attempts += 1;
    d.updated_ms = at;
    d.next_attempt_ms = None;
    d.last_status = Some(if status == DeliveryStatus::Succeeded {
        204
    } else {
        410
    });
    d.last_error = (status == DeliveryStatus::Failed).then(|| "gone".to_string());
    d.last_latency_ms = Some(87);
    d.response_snippet = Some("bye".into());
    d
}

fn hooks(ws: &[&str]) -> Vec<String> {
    ws.iter().map(|w| w.to_string()).collect()
}

fn ids(ds: &[Delivery]) -> Vec<&str> {
    ds.iter().map(|d| d.id.as_str()).collect()
}

fn page(limit: usize, status: Option<&str>, before: Option<&str>) -> DeliveryQuery {
    DeliveryQuery {
        limit: Some(limit),
        status: status.map(|s| DeliveryStatus::parse(s).expect("a status")),
        before: before.map(str::to_string),
    }
}

/// One page of the largest size.
async fn everything(s: &dyn DeliveryStore, webhook: &str) -> Vec<Delivery> {
    s.list(webhook, &page(500, None, None))
        .await
        .unwrap()
        .deliveries
}

/// Every page.
async fn all_pages(s: &dyn DeliveryStore, webhook: &str) -> Vec<Delivery> {
    let mut all = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let p = s
            .list(webhook, &page(500, None, before.as_deref()))
            .await
            .unwrap();
        all.extend(p.deliveries);
        match p.next {
            Some(n) => before = Some(n),
            None => return all,
        }
    }
}

// ---- the contract: every scenario on both stores ----

async fn enqueue_makes_one_delivery_per_event(s: Subject) {
    let (a, b) = (&*s.a, &*s.b);
    assert_eq!(a.kind(), s.kind());
    let batch = [
        dlv("d1", "w1", "e1", T0),
        dlv("d2", "w1", "e2", T0 + 1),
        // The same event for the same subscription, in the same batch.
        dlv("d3", "w1", "e1", T0 + 2),
        // The same event for another subscription is another delivery.
        dlv("d4", "w2", "e1", T0 + 3),
    ];
    assert_eq!(a.enqueue(&batch).await.unwrap(), 3);
    if let Some(lines) = s.journal_lines() {
        assert_eq!(lines, 3, "one line per delivery added");
    }
    // Another node's copy of the same events, and one new one.
    let again = [
        dlv("x1", "w1", "e1", T0 + 10),
        dlv("x2", "w1", "e3", T0 + 11),
        // An id stored already.
        dlv("d2", "w1", "e9", T0 + 12),
    ];
    assert_eq!(b.enqueue(&again).await.unwrap(), 1);
    assert_eq!(a.enqueue(&[]).await.unwrap(), 0);
    assert_eq!(ids(&everything(a, "w1").await), ["x2", "d2", "d1"]);
    assert_eq!(
        b.pending_counts().await.unwrap(),
        HashMap::from([("w1".to_string(), 3), ("w2".to_string(), 1)])
    );
    // A pending delivery without a due time is due at once.
    let mut n = dlv("d5", "w3", "e1", T0 + 5);
    n.next_attempt_ms = None;
    assert_eq!(a.enqueue(&[n]).await.unwrap(), 1);
    let got = b.get("w3", "d5").await.unwrap().unwrap();
    assert_eq!(got.next_attempt_ms, Some(T0 + 5));
    assert_eq!(
        b.get("w1", "d5").await.unwrap(),
        None,
        "another subscription's"
    );

    // Both nodes produce the same cluster-wide events (each its own ids),
    // at the same time.
    let batch = |node: &str| -> Vec<Delivery> {
        (0..50)
            .map(|i| dlv(&format!("{node}-{i}"), "c1", &format!("evt-{i}"), T0 + i))
            .collect()
    };
    let (ba, bb) = (batch("a"), batch("b"));
    let (ra, rb) = tokio::join!(a.enqueue(&ba), b.enqueue(&bb));
    assert_eq!(ra.unwrap() + rb.unwrap(), 50);
    if let Some(db) = s.pg() {
        assert_eq!(
            db.int("SELECT count(*) FROM flexgate_webhook_deliveries WHERE webhook_id = 'c1'")
                .await,
            50
        );
    }
    // Again, and the same events for another subscription, and duplicates
    // within one batch.
    let mut more = batch("c");
    more.push(dlv("c2-1", "c2", "evt-1", T0));
    more.push(dlv("c2-1b", "c2", "evt-1", T0));
    assert_eq!(a.enqueue(&more).await.unwrap(), 1);
    // A stored id is skipped too (a batch sent again).
    assert_eq!(
        b.enqueue(&[dlv("c2-1", "c2", "evt-other", T0)])
            .await
            .unwrap(),
        0
    );
    // A batch larger than one INSERT.
    let big: Vec<Delivery> = (0..1234)
        .map(|i| dlv(&format!("big-{i:05}"), "c3", &format!("e{i}"), T0 + i))
        .collect();
    assert_eq!(b.enqueue(&big).await.unwrap(), 1234);
    assert_eq!(a.enqueue(&big[1000..]).await.unwrap(), 0);
    assert_eq!(
        a.pending_counts().await.unwrap(),
        HashMap::from([
            ("w1".to_string(), 3),
            ("w2".to_string(), 1),
            ("w3".to_string(), 1),
            ("c1".to_string(), 50),
            ("c2".to_string(), 1),
            ("c3".to_string(), 1234)
        ])
    );
    // Read back exactly as written (payload byte for byte, times to the ms).
    let stored = a.get("c3", "big-00007").await.unwrap().unwrap();
    assert_eq!(stored, big[7]);
    assert_eq!(a.get("c1", "big-00007").await.unwrap(), None);
}

async fn leases_are_exclusive_until_they_expire(s: Subject) {
    let (a, b) = (&*s.a, &*s.b);
    let mut batch: Vec<Delivery> = (0..5)
        .map(|i| dlv(&format!("d{i}"), "w1", &format!("e{i}"), T0 + i))
        .collect();
    // Due later; and one of a subscription not asked for.
    batch.push(Delivery {
        next_attempt_ms: Some(T0 + 60_000),
        ..dlv("later", "w1", "later", T0)
    });
    batch.push(dlv("other", "w2", "e0", T0));
    a.enqueue(&batch).await.unwrap();
    let now = T0 + 1000;
    let w1 = hooks(&["w1", "w1"]);

    let first = a.lease_due(&w1, now, 30_000, 3).await.unwrap();
    assert_eq!(
        ids(&first),
        ["d0", "d1", "d2"],
        "oldest due first, only what is due, of the listed webhooks"
    );
    assert_eq!(first[0], dlv("d0", "w1", "e0", T0));
    let second = b.lease_due(&w1, now, 30_000, 3).await.unwrap();
    assert_eq!(ids(&second), ["d3", "d4"], "never what is leased");
    assert!(a.lease_due(&w1, now, 30_000, 3).await.unwrap().is_empty());
    assert!(a.lease_due(&[], now, 30_000, 3).await.unwrap().is_empty());
    assert!(a.lease_due(&w1, now, 30_000, 0).await.unwrap().is_empty());
    // Held: nobody else gets them, up to the lease's last millisecond.
    assert!(b
        .lease_due(&w1, now + 1, 30_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(b
        .lease_due(&w1, now + 30_000, 30_000, 10)
        .await
        .unwrap()
        .is_empty());
    // Expired: due again (a sender that died mid-attempt, a node that
    // stalled past its lease), and another node takes them.
    let taken = b.lease_due(&w1, now + 30_001, 30_000, 10).await.unwrap();
    assert_eq!(ids(&taken), ["d0", "d1", "d2", "d3", "d4"]);
    // The first lease's late outcome.
    let late = finished(first[0].clone(), DeliveryStatus::Failed, now + 30_500);
    a.finish(&late).await.unwrap();
    let status = a.get("w1", "d0").await.unwrap().unwrap().status;
    if s.pg().is_some() {
        // Not recorded: another node holds the lease.
        assert_eq!(status, DeliveryStatus::Pending);
    } else {
        // One process: of two finishes the later one wins.
        assert_eq!(status, DeliveryStatus::Failed);
    }
    let done = finished(taken[0].clone(), DeliveryStatus::Succeeded, now + 31_000);
    b.finish(&done).await.unwrap();
    assert_eq!(a.get("w1", "d0").await.unwrap(), Some(done.clone()));
    if let Some(db) = s.pg() {
        let r = db
            .client()
            .await
            .query_one(
                "SELECT leased_by, lease_until IS NULL FROM flexgate_webhook_deliveries \
                 WHERE id = 'd0'",
                &[],
            )
            .await
            .unwrap();
        let lease: (Option<String>, bool) = (r.get(0), r.get(1));
        assert_eq!(
            lease,
            (Some("b".to_string()), true),
            "finish ends the lease and keeps who made the attempt"
        );
    }
    for d in &taken[1..] {
        b.finish(&finished(
            d.clone(),
            DeliveryStatus::Succeeded,
            now + 31_000,
        ))
        .await
        .unwrap();
    }

    // The later one when it is due; the other subscription's when asked.
    let d = a
        .lease_due(&hooks(&["w1", "w2"]), T0 + 60_000, 1000, 10)
        .await
        .unwrap();
    assert_eq!(ids(&d), ["other", "later"]);
    // A lease that expired without being taken still belongs to its node.
    let mut retry = d[1].clone();
    retry.attempts = 1;
    retry.updated_ms = T0 + 65_000;
    retry.next_attempt_ms = Some(T0 + 70_000);
    retry.last_error = Some("timeout".into());
    a.finish(&retry).await.unwrap();
    assert_eq!(b.get("w1", "later").await.unwrap(), Some(retry));
    assert!(b
        .lease_due(&w1, T0 + 69_999, 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(&b.lease_due(&w1, T0 + 70_000, 1_000, 10).await.unwrap()),
        ["later"]
    );
}

async fn finish_releases_the_lease_and_replay_revives(s: Subject) {
    let (a, b) = (&*s.a, &*s.b);
    a.enqueue(&[dlv("d1", "w1", "e1", T0), dlv("d2", "w1", "e2", T0 + 1)])
        .await
        .unwrap();
    let w1 = hooks(&["w1"]);
    let leased = a.lease_due(&w1, T0 + 5, 30_000, 10).await.unwrap();
    assert_eq!(leased.len(), 2);

    // d1 fails for good; d2 is retried later.
    let dead = finished(leased[0].clone(), DeliveryStatus::Failed, T0 + 10);
    a.finish(&dead).await.unwrap();
    let mut retry = leased[1].clone();
    retry.attempts = 1;
    retry.updated_ms = T0 + 10;
    retry.next_attempt_ms = Some(T0 + 5_000);
    retry.last_error = Some("connection refused".into());
    a.finish(&retry).await.unwrap();
    assert_eq!(b.get("w1", "d1").await.unwrap(), Some(dead.clone()));
    assert_eq!(b.get("w1", "d2").await.unwrap(), Some(retry.clone()));
    // The lease is released, and the retry is due at its time only.
    assert!(b
        .lease_due(&w1, T0 + 4_999, 30_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(&b.lease_due(&w1, T0 + 5_000, 30_000, 10).await.unwrap()),
        ["d2"]
    );
    assert_eq!(
        b.pending_counts().await.unwrap(),
        HashMap::from([("w1".to_string(), 1)])
    );

    // Replay: pending, due now, attempts from 0, the last attempt kept.
    let r = b.replay("w1", "d1", T0 + 20).await.unwrap().unwrap();
    assert_eq!(r.status, DeliveryStatus::Pending);
    assert_eq!(r.attempts, 0);
    assert_eq!(r.next_attempt_ms, Some(T0 + 20));
    assert_eq!(r.updated_ms, T0 + 20);
    assert_eq!(r.last_status, dead.last_status);
    assert_eq!(r.response_snippet, dead.response_snippet);
    assert_eq!(a.get("w1", "d1").await.unwrap(), Some(r.clone()));
    assert_eq!(
        ids(&a.lease_due(&w1, T0 + 20, 30_000, 10).await.unwrap()),
        ["d1"]
    );
    // A pending one is returned unchanged; unknown ones are None.
    assert_eq!(b.replay("w1", "d1", T0 + 30).await.unwrap(), Some(r));
    assert_eq!(b.replay("w1", "nope", T0).await.unwrap(), None);
    assert_eq!(b.replay("w2", "d1", T0).await.unwrap(), None);
    // Finishing a delivery that was removed meanwhile brings nothing back.
    a.prune(&[], T0 + ORPHAN_GRACE_MS + 1_000).await.unwrap();
    a.finish(&dead).await.unwrap();
    assert_eq!(a.get("w1", "d1").await.unwrap(), None);
}

async fn the_log_pages_newest_first_with_filters(s: Subject) {
    let (a, b) = (&*s.a, &*s.b);
    // d0..d6; d3 and d4 created in the same millisecond (by id then).
    let created = [0, 1, 2, 3, 3, 5, 6];
    let batch: Vec<Delivery> = created
        .iter()
        .enumerate()
        .map(|(i, c)| dlv(&format!("d{i}"), "w1", &format!("e{i}"), T0 + c))
        .chain([dlv("o1", "w2", "e1", T0 + 4)])
        .collect();
    a.enqueue(&batch).await.unwrap();
    let leased = a
        .lease_due(&hooks(&["w1"]), T0 + 10, 60_000, 10)
        .await
        .unwrap();
    assert_eq!(leased.len(), 7);
    let by_id: HashMap<&str, &Delivery> = leased.iter().map(|d| (d.id.as_str(), d)).collect();
    for id in ["d1", "d4", "d5"] {
        a.finish(&finished(
            by_id[id].clone(),
            DeliveryStatus::Succeeded,
            T0 + 20,
        ))
        .await
        .unwrap();
    }
    let dead = finished(by_id["d2"].clone(), DeliveryStatus::Failed, T0 + 20);
    a.finish(&dead).await.unwrap();
    for id in ["d0", "d3", "d6"] {
        let mut d = by_id[id].clone();
        d.attempts = 1;
        d.updated_ms = T0 + 20;
        d.next_attempt_ms = Some(T0 + 1_000);
        a.finish(&d).await.unwrap();
    }

    let p1 = b.list("w1", &page(3, None, None)).await.unwrap();
    assert_eq!(ids(&p1.deliveries), ["d6", "d5", "d4"]);
    assert_eq!(p1.next.as_deref(), Some("d4"));
    let p2 = b.list("w1", &page(3, None, Some("d4"))).await.unwrap();
    assert_eq!(ids(&p2.deliveries), ["d3", "d2", "d1"]);
    assert_eq!(p2.next.as_deref(), Some("d1"));
    let p3 = b.list("w1", &page(3, None, Some("d1"))).await.unwrap();
    assert_eq!(ids(&p3.deliveries), ["d0"]);
    assert_eq!(p3.next, None);
    // An exact last page has no next.
    let exact = b.list("w1", &page(7, None, None)).await.unwrap();
    assert_eq!((exact.deliveries.len(), exact.next), (7, None));
    assert_eq!(exact.deliveries[4], dead);

    let ok = b
        .list("w1", &page(2, Some("succeeded"), None))
        .await
        .unwrap();
    assert_eq!(ids(&ok.deliveries), ["d5", "d4"]);
    assert_eq!(ok.next.as_deref(), Some("d4"));
    let ok2 = b
        .list("w1", &page(2, Some("succeeded"), Some("d4")))
        .await
        .unwrap();
    assert_eq!((ids(&ok2.deliveries), ok2.next), (vec!["d1"], None));
    let failed = b.list("w1", &page(50, Some("failed"), None)).await.unwrap();
    assert_eq!(ids(&failed.deliveries), ["d2"]);
    let pending = b
        .list("w1", &page(50, Some("pending"), None))
        .await
        .unwrap();
    assert_eq!(ids(&pending.deliveries), ["d6", "d3", "d0"]);
    // Unknown cursors (or another subscription's) and subscriptions: empty.
    for (w, before) in [("w1", Some("zz")), ("w1", Some("o1")), ("nope", None)] {
        let p = b.list(w, &page(5, None, before)).await.unwrap();
        assert!(
            p.deliveries.is_empty() && p.next.is_none(),
            "{w} {before:?}"
        );
    }
    // The default page size.
    assert_eq!(
        b.list("w1", &DeliveryQuery::default())
            .await
            .unwrap()
            .deliveries
            .len(),
        7
    );
    assert_eq!(
        b.pending_counts().await.unwrap(),
        HashMap::from([("w1".to_string(), 3), ("w2".to_string(), 1)])
    );

    // Replay a dead letter: pending, due now, attempts from 0, the last
    // attempt kept, not leased.
    let r = b.replay("w1", "d2", T0 + 500).await.unwrap().unwrap();
    assert_eq!(
        r,
        Delivery {
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_ms: Some(T0 + 500),
            updated_ms: T0 + 500,
            ..dead.clone()
        }
    );
    assert_eq!(b.get("w1", "d2").await.unwrap(), Some(r.clone()));
    // Due before the retries (due at T0 + 1000), and leasable by anyone.
    assert_eq!(
        ids(&b
            .lease_due(&hooks(&["w1"]), T0 + 500, 60_000, 10)
            .await
            .unwrap()),
        ["d2"]
    );
    // A pending delivery comes back unchanged; unknown ones are None.
    assert_eq!(a.replay("w1", "d2", T0 + 600).await.unwrap(), Some(r));
    assert_eq!(a.replay("w1", "nope", T0).await.unwrap(), None);
    assert_eq!(a.replay("w2", "d2", T0).await.unwrap(), None);
    // A succeeded one can be replayed too.
    let again = a.replay("w1", "d5", T0 + 700).await.unwrap().unwrap();
    assert_eq!(again.status, DeliveryStatus::Pending);
    assert_eq!(again.last_status, Some(204));
}

async fn outcomes_track_since_when_a_subscription_fails(s: Subject) {
    let (a, b) = (&*s.a, &*s.b);
    assert_eq!(a.record_outcome("w1", true, T0).await.unwrap(), None);
    if let Some(lines) = s.journal_lines() {
        assert_eq!(lines, 0, "nothing changed, nothing written");
    }
    assert_eq!(
        a.record_outcome("w1", false, T0 + 1).await.unwrap(),
        Some(T0 + 1)
    );
    // Another node's failure continues the same run.
    assert_eq!(
        b.record_outcome("w1", false, T0 + 2).await.unwrap(),
        Some(T0 + 1)
    );
    if let Some(lines) = s.journal_lines() {
        assert_eq!(lines, 1);
    }
    assert_eq!(
        b.record_outcome("w2", false, T0 + 3).await.unwrap(),
        Some(T0 + 3)
    );
    assert_eq!(b.record_outcome("w1", true, T0 + 4).await.unwrap(), None);
    assert_eq!(
        a.record_outcome("w1", false, T0 + 5).await.unwrap(),
        Some(T0 + 5)
    );
    if let Some(lines) = s.journal_lines() {
        assert_eq!(lines, 4);
    }
    assert_eq!(
        a.record_outcome("w2", false, T0 + 6).await.unwrap(),
        Some(T0 + 3)
    );
}

async fn prune_keeps_recent_finished_and_live_subscriptions_only(s: Subject) {
    let a = &*s.a;
    let now = T0 + KEEP_FINISHED_MS + 1_000_000;
    // w1: KEEP_FINISHED + 5 recent finished ones, an old finished one and
    // an old pending one (never pruned while its subscription lives).
    let mut batch: Vec<Delivery> = (0..KEEP_FINISHED as u64 + 5)
        .map(|i| {
            let d = dlv(&format!("f{i:04}"), "w1", &format!("f{i}"), now - 5000 + i);
            finished(d, DeliveryStatus::Succeeded, now - 100)
        })
        .collect();
    batch.push(finished(
        dlv("old", "w1", "old", T0),
        DeliveryStatus::Failed,
        T0 + 999_999,
    ));
    batch.push(dlv("old-pending", "w1", "op", T0));
    // w2 (deleted): a failed one and a leased pending one, both unchanged
    // for longer than the orphan grace.
    let stale = now - ORPHAN_GRACE_MS - 10;
    batch.push(finished(
        dlv("g1", "w2", "g1", stale),
        DeliveryStatus::Failed,
        stale,
    ));
    batch.push(dlv("g2", "w2", "g2", stale + 5));
    // w3: not live on this node yet (another node just created it): kept.
    batch.push(dlv("n1", "w3", "n1", now - 10));
    assert_eq!(a.enqueue(&batch).await.unwrap(), batch.len());
    a.record_outcome("w1", false, now - 50).await.unwrap();
    a.record_outcome("w2", false, now - 50).await.unwrap();
    let leased = a.lease_due(&hooks(&["w2"]), now, 60_000, 10).await.unwrap();
    assert_eq!(ids(&leased), ["g2"]);

    a.prune(&hooks(&["w1"]), now).await.unwrap();
    let w1 = everything(a, "w1").await;
    assert_eq!(w1.len(), 500);
    let all = all_pages(a, "w1").await;
    assert_eq!(
        all.len(),
        KEEP_FINISHED + 1,
        "the newest finished and the pending one"
    );
    let mut left: HashSet<String> = all.iter().map(|d| d.id.clone()).collect();
    assert_eq!(
        ids(&everything(a, "w3").await),
        ["n1"],
        "a subscription not live here yet keeps its deliveries"
    );
    assert!(left.contains("old-pending"));
    assert!(!left.contains("old"));
    for i in 0..5 {
        assert!(!left.contains(&format!("f{i:04}")), "f{i:04}");
    }
    assert!(left.contains(&format!("f{:04}", KEEP_FINISHED + 4)));
    if let Some(db) = s.pg() {
        let rows: HashSet<String> = db
            .client()
            .await
            .query("SELECT id FROM flexgate_webhook_deliveries", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        left.insert("n1".into());
        assert_eq!(rows, left, "nothing else is left in the table");
    }
    assert!(everything(a, "w2").await.is_empty());
    assert_eq!(
        a.pending_counts().await.unwrap(),
        HashMap::from([("w1".to_string(), 1), ("w3".to_string(), 1)])
    );
    // The leased one went with its subscription; its late outcome is dropped.
    a.finish(&finished(leased[0].clone(), DeliveryStatus::Succeeded, now))
        .await
        .unwrap();
    assert_eq!(a.get("w2", "g2").await.unwrap(), None);
    // w2's health went too: its next failure starts a new run.
    assert_eq!(a.record_outcome("w2", false, now).await.unwrap(), Some(now));
    assert_eq!(
        a.record_outcome("w1", false, now).await.unwrap(),
        Some(now - 50)
    );
    // A second prune has nothing to do.
    let size = |s: &Subject| {
        s.journal_file()
            .map(|f| std::fs::metadata(f).unwrap().len())
    };
    let before = size(&s);
    a.prune(&hooks(&["w1", "w2"]), now).await.unwrap();
    assert_eq!(size(&s), before);
    assert_eq!(everything(a, "w1").await, w1);

    // And it all holds after a restart.
    let s = s.restart();
    let a = &*s.a;
    assert_eq!(everything(a, "w1").await, w1);
    assert!(everything(a, "w2").await.is_empty());

    // Nothing live left: everything goes, once past the orphan grace.
    a.prune(&[], now + ORPHAN_GRACE_MS + 1_000).await.unwrap();
    assert!(all_pages(a, "w1").await.is_empty());
    assert_eq!(a.pending_counts().await.unwrap(), HashMap::new());
    if let Some(db) = s.pg() {
        assert_eq!(db.count("flexgate_webhook_deliveries").await, 0);
        assert_eq!(db.count("flexgate_webhook_health").await, 0);
    }
    let later = now + ORPHAN_GRACE_MS + 2_000;
    assert_eq!(
        a.record_outcome("w1", false, later).await.unwrap(),
        Some(later),
        "the health records went too"
    );
}

// ---- PostgreSQL only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_adds_the_delivery_tables() {
    let Some(db) = TestDb::create() else { return };
    assert_eq!(SCHEMA_VERSION, 3);
    assert_eq!(
        migrate::run(&db.pool()).await.unwrap(),
        MigrationReport {
            version: 3,
            applied: vec![1, 2, 3]
        }
    );
    assert_eq!(
        migrate::run(&db.pool()).await.unwrap(),
        MigrationReport {
            version: 3,
            applied: vec![]
        }
    );
    assert_eq!(
        db.int(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'flexgate_webhook_deliveries' \
             AND indexname IN ('flexgate_webhook_deliveries_due_idx', \
             'flexgate_webhook_deliveries_log_idx')"
        )
        .await,
        2
    );
    // The status is checked by the database too.
    let err = db
        .client()
        .await
        .execute(
            "INSERT INTO flexgate_webhook_deliveries (id, webhook_id, event_id, event_type, \
             payload, status, created_at, updated_at) \
             VALUES ('x', 'w', 'e', 't', '{}', 'lost', now(), now())",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("23514"),
        "a check violation: {err:?}"
    );
    assert_eq!(node(&db, "a").kind(), "postgres");
    assert_eq!(node(&db, "node-a").node(), "node-a");
    // Before the migration ran: a clear error, not a panic.
    let Some(bare) = TestDb::create() else { return };
    match node(&bare, "a").pending_counts().await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("flexgate migrate"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_on_two_nodes_never_share_a_delivery() {
    let Some(db) = TestDb::migrated().await else {
        return;
    };
    let nodes = [Arc::new(node(&db, "a")), Arc::new(node(&db, "b"))];
    let all: Vec<Delivery> = (0..200)
        .map(|i| {
            let w = ["w1", "w2"][i as usize % 2];
            dlv(&format!("d{i:03}"), w, &format!("e{i}"), T0 + i % 17)
        })
        .collect();
    nodes[0].enqueue(&all).await.unwrap();
    let now = T0 + 1000;
    let webhooks = hooks(&["w1", "w2"]);
    // Two senders per node, each leasing batches of 10 until none is left.
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for _ in 0..2 {
            let (node, webhooks) = (node.clone(), webhooks.clone());
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = node.lease_due(&webhooks, now, 60_000, 10).await.unwrap();
                    if batch.is_empty() {
                        return (n, got);
                    }
                    assert!(batch.len() <= 10);
                    got.extend(batch.into_iter().map(|d| d.id));
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    let mut seen = HashSet::new();
    let mut per_node = [0usize; 2];
    for t in tasks {
        let (n, got) = t.await.unwrap();
        per_node[n] += got.len();
        for id in got {
            assert!(seen.insert(id.clone()), "{id} was leased twice");
        }
    }
    assert_eq!(seen.len(), 200, "every delivery was leased");
    assert_eq!(per_node[0] + per_node[1], 200);
    let holders: Vec<(String, i64)> = db
        .client()
        .await
        .query(
            "SELECT leased_by, count(*) FROM flexgate_webhook_deliveries \
             GROUP BY leased_by ORDER BY leased_by",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        holders,
        [
            ("a".to_string(), per_node[0] as i64),
            ("b".to_string(), per_node[1] as i64)
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect::<Vec<_>>()
    );
    // Oldest due first: a fresh lease after expiry returns them in order.
    let again = nodes[1]
        .lease_due(&webhooks, now + 60_001, 1000, 5)
        .await
        .unwrap();
    let mut expected: Vec<&Delivery> = all.iter().collect();
    expected.sort_by_key(|d| (d.next_attempt_ms, d.created_ms, d.id.clone()));
    assert_eq!(
        again.iter().map(|d| d.created_ms).collect::<Vec<_>>(),
        expected[..5]
            .iter()
            .map(|d| d.created_ms)
            .collect::<Vec<_>>()
    );
}
