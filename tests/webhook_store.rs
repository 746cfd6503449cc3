//! The PostgreSQL webhook delivery store against a real PostgreSQL, with
//! two store instances standing for two nodes.
//!
//! Each test creates its own database (`fg_test_<random>`), dropped at the
//! end even when the test panics, so tests run in parallel and leave
//! nothing behind. The server is `FLEXGATE_TEST_PG` (libpq key=value
//! settings without `dbname`; default `host=127.0.0.1 port=5432
//! user=postgres`). When it cannot be reached the tests are skipped with a
//! loud message, except under `CI=true`, where they fail.

use flexgate::pg::PgPool;
use flexgate::store::migrate::{self, MigrationReport, SCHEMA_VERSION};
use flexgate::store::StoreError;
use flexgate::webhooks::delivery::{
    Delivery, DeliveryQuery, DeliveryStatus, DeliveryStore, KEEP_FINISHED, KEEP_FINISHED_MS,
};
use flexgate::webhooks::pg_store::PgDeliveryStore;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::NoTls;

const DEFAULT_SERVER: &str = "host=127.0.0.1 port=5432 user=postgres";

/// Far from the database's clock: every time below is the caller's.
const T0: u64 = 1_900_000_000_000;

fn server() -> String {
    std::env::var("FLEXGATE_TEST_PG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SERVER.to_string())
}

/// A database of its own for one test; dropped (connections included)
/// when the guard goes, panics included.
struct TestDb {
    name: String,
}

impl TestDb {
    fn url(&self) -> String {
        format!("{} dbname={}", server(), self.name)
    }

    fn pool(&self) -> PgPool {
        PgPool::new(&self.url(), None).expect("valid URL")
    }

    /// A node's store, on a pool of its own (as another process would be).
    fn node(&self, name: &str) -> PgDeliveryStore {
        PgDeliveryStore::new(self.pool(), name)
    }

    /// A direct connection, for looking behind the store's back.
    async fn sql(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }

    async fn count(&self, sql: &str) -> i64 {
        self.sql().await.query_one(sql, &[]).await.unwrap().get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Own thread and runtime: works from any test runtime, and while
        // unwinding.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = format!("{} dbname=postgres", server());
                if let Ok((client, conn)) = tokio_postgres::connect(&admin, NoTls).await {
                    tokio::spawn(conn);
                    if let Err(e) = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                    {
                        eprintln!("could not drop test database {name}: {e}");
                    }
                }
            })
        })
        .join();
    }
}

/// A fresh empty database, or `None` (test skipped) when PostgreSQL cannot
/// be reached outside CI.
async fn fresh_db() -> Option<TestDb> {
    let admin = format!("{} dbname=postgres", server());
    let connect = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_postgres::connect(&admin, NoTls),
    )
    .await;
    let client = match connect {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            client
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 3s".to_string(),
            };
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL not reachable at {admin:?} ({why}) and CI=true");
            }
            // Straight to the process's stderr: the harness would swallow
            // eprintln! of a passing test.
            let msg = format!(
                "\n*** SKIPPED: PostgreSQL not reachable at {admin:?} ({why}); \
                 set FLEXGATE_TEST_PG or start PostgreSQL to run this test ***\n"
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
            return None;
        }
    };
    let name = format!("fg_test_{:016x}", fastrand::u64(..));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the test database");
    Some(TestDb { name })
}

macro_rules! db_or_skip {
    () => {
        match fresh_db().await {
            Some(db) => db,
            None => return,
        }
    };
}

/// A fresh database with the schema applied.
async fn migrated() -> Option<TestDb> {
    let db = fresh_db().await?;
    migrate::run(&db.pool()).await.expect("migrate");
    Some(db)
}

macro_rules! migrated_or_skip {
    () => {
        match migrated().await {
            Some(db) => db,
            None => return,
        }
    };
}

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
        status: status.map(str::to_string),
        before: before.map(str::to_string),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_adds_the_delivery_tables() {
    let db = db_or_skip!();
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
        db.count(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'flexgate_webhook_deliveries' \
             AND indexname IN ('flexgate_webhook_deliveries_due_idx', \
             'flexgate_webhook_deliveries_log_idx')"
        )
        .await,
        2
    );
    // The status is checked by the database too.
    let err = db
        .sql()
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
    assert_eq!(db.node("a").kind(), "postgres");
    // Before the migration ran: a clear error, not a panic.
    let bare = db_or_skip!();
    match bare.node("a").pending_counts().await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("flexgate migrate"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_makes_one_delivery_per_event_across_nodes() {
    let db = migrated_or_skip!();
    let (a, b) = (db.node("a"), db.node("b"));
    // Both nodes produce the same cluster-wide events (each its own ids).
    let batch = |node: &str| -> Vec<Delivery> {
        (0..50)
            .map(|i| dlv(&format!("{node}-{i}"), "w1", &format!("evt-{i}"), T0 + i))
            .collect()
    };
    let (ba, bb) = (batch("a"), batch("b"));
    let (ra, rb) = tokio::join!(a.enqueue(&ba), b.enqueue(&bb));
    assert_eq!(ra.unwrap() + rb.unwrap(), 50);
    assert_eq!(
        db.count("SELECT count(*) FROM flexgate_webhook_deliveries")
            .await,
        50
    );
    // Again, and the same events for another subscription, and duplicates
    // within one batch.
    let mut more = batch("c");
    more.push(dlv("w2-1", "w2", "evt-1", T0));
    more.push(dlv("w2-1b", "w2", "evt-1", T0));
    assert_eq!(a.enqueue(&more).await.unwrap(), 1);
    assert_eq!(a.enqueue(&[]).await.unwrap(), 0);
    // A stored id is skipped too (a batch sent again).
    assert_eq!(
        b.enqueue(&[dlv("w2-1", "w2", "evt-other", T0)])
            .await
            .unwrap(),
        0
    );
    // A batch larger than one INSERT.
    let big: Vec<Delivery> = (0..1234)
        .map(|i| dlv(&format!("big-{i:05}"), "w3", &format!("e{i}"), T0 + i))
        .collect();
    assert_eq!(b.enqueue(&big).await.unwrap(), 1234);
    assert_eq!(a.enqueue(&big[1000..]).await.unwrap(), 0);
    assert_eq!(
        a.pending_counts().await.unwrap(),
        HashMap::from([
            ("w1".to_string(), 50),
            ("w2".to_string(), 1),
            ("w3".to_string(), 1234)
        ])
    );
    // Read back exactly as written (payload byte for byte, times to the ms).
    let stored = a.get("w3", "big-00007").await.unwrap().unwrap();
    assert_eq!(stored, big[7]);
    assert_eq!(a.get("w1", "big-00007").await.unwrap(), None);
    // A pending delivery without a due time is due at once.
    let mut n = dlv("n1", "w4", "e1", T0 + 5);
    n.next_attempt_ms = None;
    a.enqueue(&[n]).await.unwrap();
    assert_eq!(
        a.get("w4", "n1").await.unwrap().unwrap().next_attempt_ms,
        Some(T0 + 5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_on_two_nodes_never_share_a_delivery() {
    let db = migrated_or_skip!();
    let nodes = [Arc::new(db.node("a")), Arc::new(db.node("b"))];
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
    let sql = db.sql().await;
    let holders: Vec<(String, i64)> = sql
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_goes_to_another_node() {
    let db = migrated_or_skip!();
    let (a, b) = (db.node("node-a"), db.node("node-b"));
    assert_eq!(a.node(), "node-a");
    a.enqueue(&[
        dlv("d1", "w1", "e1", T0),
        Delivery {
            next_attempt_ms: Some(T0 + 50_000),
            ..dlv("later", "w1", "e2", T0)
        },
        dlv("other", "w9", "e1", T0),
    ])
    .await
    .unwrap();
    let w1 = hooks(&["w1"]);
    let now = T0 + 100;
    let leased = a.lease_due(&w1, now, 30_000, 10).await.unwrap();
    assert_eq!(
        ids(&leased),
        ["d1"],
        "only what is due, of the listed webhooks"
    );
    assert_eq!(leased[0], dlv("d1", "w1", "e1", T0));
    assert!(a.lease_due(&[], now, 30_000, 10).await.unwrap().is_empty());
    assert!(a.lease_due(&w1, now, 30_000, 0).await.unwrap().is_empty());
    // Held: nobody else gets it, up to the lease's last millisecond.
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
    // Node a stalls past its lease; node b takes the delivery.
    let taken = b.lease_due(&w1, now + 30_001, 30_000, 10).await.unwrap();
    assert_eq!(ids(&taken), ["d1"]);
    // Node a's late outcome is not recorded: b holds the lease.
    let late = finished(leased[0].clone(), DeliveryStatus::Failed, now + 30_500);
    a.finish(&late).await.unwrap();
    assert_eq!(
        a.get("w1", "d1").await.unwrap().unwrap().status,
        DeliveryStatus::Pending
    );
    let done = finished(taken[0].clone(), DeliveryStatus::Succeeded, now + 31_000);
    b.finish(&done).await.unwrap();
    assert_eq!(a.get("w1", "d1").await.unwrap(), Some(done.clone()));
    let lease: (Option<String>, bool) = {
        let r = db
            .sql()
            .await
            .query_one(
                "SELECT leased_by, lease_until IS NULL FROM flexgate_webhook_deliveries \
                 WHERE id = 'd1'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        lease,
        (Some("node-b".to_string()), true),
        "finish ends the lease and keeps who made the attempt"
    );

    // A lease that expired without being taken still belongs to its node.
    let l = b.lease_due(&w1, T0 + 50_000, 1_000, 10).await.unwrap();
    assert_eq!(ids(&l), ["later"]);
    let mut retry = l[0].clone();
    retry.attempts = 1;
    retry.updated_ms = T0 + 60_000;
    retry.next_attempt_ms = Some(T0 + 70_000);
    retry.last_error = Some("timeout".into());
    b.finish(&retry).await.unwrap();
    assert_eq!(a.get("w1", "later").await.unwrap(), Some(retry));
    assert!(a
        .lease_due(&w1, T0 + 69_999, 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(&a.lease_due(&w1, T0 + 70_000, 1_000, 10).await.unwrap()),
        ["later"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_replay_and_the_delivery_log() {
    let db = migrated_or_skip!();
    let (a, b) = (db.node("a"), db.node("b"));
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
    assert_eq!(
        b.list("w1", &page(5, Some("done"), None))
            .await
            .unwrap_err(),
        StoreError::Invalid("status must be pending, succeeded or failed".into())
    );
    for (w, before) in [("w1", Some("zz")), ("w1", Some("o1")), ("nope", None)] {
        let p = b.list(w, &page(5, None, before)).await.unwrap();
        assert!(
            p.deliveries.is_empty() && p.next.is_none(),
            "{w} {before:?}"
        );
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_track_since_when_a_subscription_fails() {
    let db = migrated_or_skip!();
    let (a, b) = (db.node("a"), db.node("b"));
    assert_eq!(a.record_outcome("w1", true, T0).await.unwrap(), None);
    assert_eq!(
        a.record_outcome("w1", false, T0 + 1).await.unwrap(),
        Some(T0 + 1)
    );
    // Another node's failure continues the same run.
    assert_eq!(
        b.record_outcome("w1", false, T0 + 2).await.unwrap(),
        Some(T0 + 1)
    );
    assert_eq!(
        b.record_outcome("w2", false, T0 + 3).await.unwrap(),
        Some(T0 + 3)
    );
    assert_eq!(b.record_outcome("w1", true, T0 + 4).await.unwrap(), None);
    assert_eq!(
        a.record_outcome("w1", false, T0 + 5).await.unwrap(),
        Some(T0 + 5)
    );
    assert_eq!(
        a.record_outcome("w2", false, T0 + 6).await.unwrap(),
        Some(T0 + 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_recent_finished_and_live_subscriptions_only() {
    let db = migrated_or_skip!();
    let a = db.node("a");
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
    // w2 (to be deleted): a recent failed one and a leased pending one.
    batch.push(finished(
        dlv("g1", "w2", "g1", now - 10),
        DeliveryStatus::Failed,
        now - 10,
    ));
    batch.push(dlv("g2", "w2", "g2", now - 5));
    assert_eq!(a.enqueue(&batch).await.unwrap(), batch.len());
    a.record_outcome("w1", false, now - 50).await.unwrap();
    a.record_outcome("w2", false, now - 50).await.unwrap();
    let leased = a.lease_due(&hooks(&["w2"]), now, 60_000, 10).await.unwrap();
    assert_eq!(ids(&leased), ["g2"]);

    a.prune(&hooks(&["w1"]), now).await.unwrap();
    let left: HashSet<String> = db
        .sql()
        .await
        .query("SELECT id FROM flexgate_webhook_deliveries", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        left.len(),
        KEEP_FINISHED + 1,
        "the newest finished and the pending one"
    );
    assert!(left.contains("old-pending"));
    assert!(!left.contains("old"));
    for i in 0..5 {
        assert!(!left.contains(&format!("f{i:04}")), "f{i:04}");
    }
    assert!(left.contains(&format!("f{:04}", KEEP_FINISHED + 4)));
    assert_eq!(
        a.pending_counts().await.unwrap(),
        HashMap::from([("w1".to_string(), 1)])
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
    // Nothing live left: everything goes.
    a.prune(&[], now).await.unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM flexgate_webhook_deliveries")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM flexgate_webhook_health")
            .await,
        0
    );
}
