//! The PostgreSQL config store against a real PostgreSQL: each test on a
//! database of its own ([`common::pg::TestDb`]; `FLEXGATE_TEST_PG` names
//! the server).

mod common;

use common::pg::{server, TestDb, DEFAULT_SERVER};
use flexgate::config;
use flexgate::keys::store::{KeyFile, StoredKey};
use flexgate::store::migrate::{MigrationReport, SCHEMA_VERSION};
use flexgate::store::postgres::PgStore;
use flexgate::store::{AuditEntry, AuditQuery, State, Store, StoreError, Versioned};
use serde_json::json;
use std::time::{Duration, Instant};

fn store_on(db: &TestDb) -> PgStore {
    PgStore::new(&db.url()).expect("valid URL")
}

/// A fresh database with the schema applied, and a store on it.
async fn migrated() -> Option<(TestDb, PgStore)> {
    let db = TestDb::create()?;
    let store = store_on(&db);
    store.migrate().await.expect("migrate");
    Some((db, store))
}

const CONFIG: &str = r#"
proxy:
  port: 3100
  timeout: 30s
  connectTimeout: 2000
  maxBodySize: 5mb
  trustedProxies: [10.0.0.0/8, 192.168.0.0/16]
  viaName: edge-1
  maxInFlight: 5000
  limits:
    maxHeaders: 80
    maxUriBytes: 4kb
security:
  allowedHosts: ["*.internal.corp", "hooks.example.com"]
  blockedIPs: [192.0.2.0/24]
  allowedIPs: [169.254.169.254]
  denyIps: [203.0.113.7/32]
  auth:
    type: apiKey
    header: X-API-Key
    keys:
      - key: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        name: ci
        scopes: [read, write]
        routes: [users]
        expiresAt: 1900000000
      - key: 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
        id: legacy-key
        revoked: true
  jwt:
    issuer: https://auth.internal.corp
    audience: [api, admin]
    algorithms: [HS256]
    secret: s3cret
    leeway: 30s
    forwardClaims: {sub: X-User-Id, email: X-User-Email}
rateLimit:
  backend: memory
  global: {max: 1000, windowMs: 60000, by: ip}
  perRoute:
    - path: /api/*
      max: 10
      windowMs: 1s
      message: slow down
      by: consumer
upstreams:
  - name: api
    targets:
      - url: http://app1.internal.corp:9001
        weight: 3
      - url: http://app2.internal.corp:9002
    loadBalancing: consistentHash
    hashKey: header:X-User
    retries: 2
    retryBackoff: 50ms
    circuitBreaker: {enabled: true, failureThreshold: 50, openDuration: 30s, minimumRequests: 20, consecutiveFailures: 5}
    healthCheck: {path: /healthz, interval: 5s, timeout: 1s, healthyThreshold: 2, unhealthyThreshold: 3}
    passive: {maxFailures: 3, ejectDuration: 10s}
  - name: legacy
    url: http://legacy.internal.corp:8080
    hostHeader: client
    healthCheck: {}
routes:
  - id: users
    name: Users API
    path: /api/users/*
    upstream: api
    methods: [GET, POST]
    auth: required
    scopes: [read]
    priority: 10
    requestHeaders: {add: {X-Env: prod}, remove: [Cookie]}
    responseHeaders: {add: {X-Served-By: flexgate}}
  - path: /legacy/*
    upstream: legacy
    stripPrefix: true
    timeout: 2s
  - id: status
    path: /status
    upstream: legacy
    enabled: false
  - path: /b/*
    upstream: api
    rateLimit: {max: 5, windowMs: 1000, message: easy}
    maxBodySize: 1kb
    websocket: true
    criticality: low
logging:
  level: debug
  format: text
  accessLog: true
  sampling: {successRate: 0.25, errorRate: 1.0}
webhooks:
  - id: ops
    url: https://hooks.example.com/x
    events: [config.changed, upstream.down]
    enabled: true
    maxRetries: 5
    initialDelay: 500ms
    backoffMultiplier: 1.5
    headers: {X-Token: abc}
    secret: whsec
  - url: https://hooks.example.com/y
    events: [upstream.down]
"#;

fn sample_state() -> State {
    let config = config::parse(CONFIG)
        .expect("sample config parses")
        .dynamic();
    assert_eq!(config.routes.len(), 4);
    assert!(config.routes[1].id.is_none() && config.routes[3].id.is_none());
    State {
        config,
        keys: KeyFile {
            keys: vec![
                StoredKey {
                    id: "key_0a1b2c3d4e5f".into(),
                    name: "deploy-bot".into(),
                    digest: "a".repeat(64),
                    scopes: vec!["write".into(), "admin".into(), "read".into()],
                    routes: vec!["users".into(), "route-1".into()],
                    expires_at: Some(1_900_000_000),
                    revoked: false,
                    created_at: 1_780_000_000,
                },
                StoredKey {
                    id: "key_ffeeddccbbaa".into(),
                    name: "old".into(),
                    digest: "0123456789abcdef".repeat(4),
                    scopes: vec![],
                    routes: vec![],
                    expires_at: None,
                    revoked: true,
                    created_at: 1_700_000_000,
                },
            ],
        },
    }
}

fn entry(time: &str, actor: &str, action: &str, resource: &str) -> AuditEntry {
    AuditEntry {
        id: 0,
        time: time.into(),
        actor: actor.into(),
        action: action.into(),
        resource: resource.into(),
        before: None,
        after: Some(json!({"path": "/x", "n": 1})),
        version: 0,
    }
}

async fn all_audit(store: &PgStore) -> Vec<AuditEntry> {
    store
        .audit(&AuditQuery {
            limit: Some(500),
            ..Default::default()
        })
        .await
        .unwrap()
        .entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_report_the_version() {
    let Some(db) = TestDb::create() else { return };
    let store = store_on(&db);
    assert_eq!(SCHEMA_VERSION, 3);
    assert_eq!(
        store.migrate_report().await.unwrap(),
        MigrationReport {
            version: 3,
            applied: vec![1, 2, 3]
        }
    );
    assert_eq!(
        store.migrate_report().await.unwrap(),
        MigrationReport {
            version: 3,
            applied: vec![]
        },
        "second run is a no-op"
    );
    assert_eq!(store.migrate().await.unwrap(), 3);
    assert_eq!(db.count("flexgate_schema_history").await, 3);
    store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_each_file_once() {
    let Some(db) = TestDb::create() else { return };
    let stores: Vec<PgStore> = (0..4).map(|_| store_on(&db)).collect();
    let reports = futures::future::join_all(stores.iter().map(|s| s.migrate_report())).await;
    let mut applied = 0;
    for r in reports {
        let r = r.expect("every concurrent run succeeds");
        assert_eq!(r.version, 3);
        applied += r.applied.len();
    }
    assert_eq!(
        applied, 3,
        "V1, V2 and V3 were each applied by exactly one run"
    );
    assert_eq!(db.count("flexgate_schema_history").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_with_a_clear_error() {
    let Some((db, store)) = migrated().await else {
        return;
    };
    db.client()
        .await
        .execute(
            "INSERT INTO flexgate_schema_history (version, name, checksum) \
             VALUES (7, 'from_the_future', 'x')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        store.migrate().await,
        Err(StoreError::Invalid(
            "database schema is at version 7 but this flexgate knows up to 3; upgrade flexgate"
                .into()
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_migration_is_refused() {
    let Some((db, store)) = migrated().await else {
        return;
    };
    db.client()
        .await
        .execute(
            "UPDATE flexgate_schema_history SET checksum = 'edited' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    match store.migrate().await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("checksum"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_database_loads_nothing_and_is_at_version_zero() {
    let Some(db) = TestDb::create() else { return };
    let store = store_on(&db);
    match store.load().await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("flexgate migrate"), "{m}"),
        other => panic!("an unmigrated database: {other:?}"),
    }
    store.migrate().await.unwrap();
    assert_eq!(store.load().await, Ok(None));
    assert_eq!(store.version().await, Ok(0));
    assert!(all_audit(&store).await.is_empty());
    assert_eq!(store.kind(), "postgres");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_loads_back_exactly() {
    let Some((db, store)) = migrated().await else {
        return;
    };
    let state = sample_state();
    let v = store
        .commit(
            0,
            &state,
            &[entry("2026-11-25T10:00:00Z", "import", "import", "config")],
        )
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert_eq!(store.version().await, Ok(1));
    let loaded = store.load().await.unwrap().expect("stored");
    assert_eq!(
        loaded,
        Versioned {
            version: 1,
            state: state.clone()
        }
    );

    // Rows are per resource, keyed, in order; routes without an id get the
    // config's default id as their key.
    let sql = db.client().await;
    let ids: Vec<String> = sql
        .query("SELECT id FROM routes ORDER BY position", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["users", "route-1", "status", "route-3"]);
    let webhooks: Vec<String> = sql
        .query("SELECT id FROM webhooks ORDER BY position", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let unnamed = config::WebhookConfig {
        url: "https://hooks.example.com/y".into(),
        ..Default::default()
    }
    .effective_id();
    assert!(unnamed.starts_with("webhook-"), "{unnamed}");
    assert_eq!(webhooks, ["ops".to_string(), unnamed]);
    let settings: Vec<String> = sql
        .query("SELECT name FROM settings ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(settings, ["logging", "proxy", "rateLimit", "security"]);
    let digest: String = sql
        .query_one("SELECT digest FROM api_keys WHERE name = 'deploy-bot'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(digest, "a".repeat(64));

    // A second write: reorder, drop and change rows.
    let mut next = state.clone();
    next.config.routes.swap(0, 2);
    next.config.routes.remove(1);
    next.config.upstreams[1].retries = Some(4);
    next.config.webhooks.clear();
    next.config.logging.level = None;
    next.keys.keys[0].revoked = true;
    next.keys.keys.reverse();
    assert_eq!(store.commit(1, &next, &[]).await, Ok(2));
    assert_eq!(
        store.load().await.unwrap(),
        Some(Versioned {
            version: 2,
            state: next
        })
    );
    assert_eq!(db.count("webhooks").await, 0);
    assert_eq!(db.count("routes").await, 3);

    // An empty state is a state too (version > 0).
    assert_eq!(store.commit(2, &State::default(), &[]).await, Ok(3));
    assert_eq!(
        store.load().await.unwrap(),
        Some(Versioned {
            version: 3,
            state: State::default()
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_version_is_a_conflict_and_writes_nothing() {
    let Some((db, store)) = migrated().await else {
        return;
    };
    let state = sample_state();
    store
        .commit(
            0,
            &state,
            &[entry("2026-11-25T10:00:00Z", "cli", "import", "config")],
        )
        .await
        .unwrap();
    let mut other = state.clone();
    other.config.routes.clear();
    other.keys.keys.clear();
    for stale in [0, 2, 7] {
        assert_eq!(
            store
                .commit(
                    stale,
                    &other,
                    &[entry(
                        "2026-11-25T11:00:00Z",
                        "cli",
                        "delete",
                        "route/users"
                    )]
                )
                .await,
            Err(StoreError::Conflict { current: 1 })
        );
    }
    assert_eq!(store.version().await, Ok(1));
    assert_eq!(
        store.load().await.unwrap(),
        Some(Versioned { version: 1, state })
    );
    assert_eq!(db.count("routes").await, 4);
    assert_eq!(db.count("api_keys").await, 2);
    assert_eq!(all_audit(&store).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_from_one_version_have_one_winner() {
    let Some((db, first)) = migrated().await else {
        return;
    };
    let second = store_on(&db);
    for expected in [0u64, 1, 2] {
        let mut a = sample_state();
        a.config.routes.truncate(1);
        let mut b = sample_state();
        b.config.upstreams.truncate(1);
        let ea = [entry("2026-11-25T10:00:00Z", "a", "update", "config")];
        let eb = [entry("2026-11-25T10:00:00Z", "b", "update", "config")];
        let (ra, rb) = tokio::join!(
            first.commit(expected, &a, &ea),
            second.commit(expected, &b, &eb)
        );
        let winner = match (&ra, &rb) {
            (Ok(v), Err(StoreError::Conflict { current })) => {
                assert_eq!((*v, *current), (expected + 1, expected + 1));
                a
            }
            (Err(StoreError::Conflict { current }), Ok(v)) => {
                assert_eq!((*v, *current), (expected + 1, expected + 1));
                b
            }
            other => panic!("expected exactly one winner from {expected}: {other:?}"),
        };
        assert_eq!(
            first.load().await.unwrap(),
            Some(Versioned {
                version: expected + 1,
                state: winner
            })
        );
    }
    assert_eq!(
        all_audit(&first).await.len(),
        3,
        "only the winners' entries"
    );

    // Many writers at once: still one winner.
    let stores: Vec<PgStore> = (0..6).map(|_| store_on(&db)).collect();
    let state = sample_state();
    let results = futures::future::join_all(stores.iter().map(|s| s.commit(3, &state, &[]))).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(4) | Err(StoreError::Conflict { current: 4 }))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_commits_without_a_version_row() {
    let Some((db, first)) = migrated().await else {
        return;
    };
    db.client()
        .await
        .execute("DELETE FROM config_version", &[])
        .await
        .unwrap();
    assert_eq!(first.load().await, Ok(None));
    let second = store_on(&db);
    let state = sample_state();
    let (ra, rb) = tokio::join!(first.commit(0, &state, &[]), second.commit(0, &state, &[]));
    let mut results = [ra, rb];
    results.sort_by_key(|r| r.is_ok());
    assert_eq!(
        results,
        [Err(StoreError::Conflict { current: 1 }), Ok(1)],
        "one winner"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_leaves_no_audit_entry_and_no_rows() {
    let Some((db, store)) = migrated().await else {
        return;
    };
    let state = sample_state();
    store
        .commit(
            0,
            &state,
            &[entry("2026-11-25T10:00:00Z", "cli", "import", "config")],
        )
        .await
        .unwrap();
    let mut next = state.clone();
    next.config.routes.truncate(1);

    // A bad audit entry (written last) undoes the whole commit.
    let bad_time = [
        entry("2026-11-25T11:00:00Z", "cli", "delete", "route/status"),
        entry("yesterday-ish", "cli", "delete", "route/b"),
    ];
    match store.commit(1, &next, &bad_time).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("audit"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Rows the database refuses (a duplicate key, a plaintext "digest").
    let mut dup = next.clone();
    dup.config.webhooks[1].id = Some("ops".into());
    let mut plaintext = next.clone();
    plaintext.keys.keys[0].digest = "fgk_not-a-digest".into();
    for bad in [dup, plaintext] {
        let good = [entry("2026-11-25T11:00:00Z", "cli", "update", "config")];
        match store.commit(1, &bad, &good).await {
            Err(StoreError::Invalid(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(store.version().await, Ok(1));
    assert_eq!(
        store.load().await.unwrap(),
        Some(Versioned { version: 1, state })
    );
    assert_eq!(db.count("audit_log").await, 1);
    // The store still works afterwards.
    assert_eq!(
        store
            .commit(
                1,
                &next,
                &[entry("2026-11-25T12:00:00Z", "cli", "update", "config")]
            )
            .await,
        Ok(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_pages_newest_first_with_filters() {
    let Some((_db, store)) = migrated().await else {
        return;
    };
    let state = sample_state();
    let mut with_before = entry(
        "2026-11-25T10:00:02+01:00",
        "session",
        "update",
        "route/users",
    );
    with_before.before = Some(json!({"path": "/old", "list": [1, 2, {"a": null}]}));
    with_before.after = None;
    store
        .commit(
            0,
            &state,
            &[
                entry("2026-11-25T08:00:00Z", "import", "import", "config"),
                entry("2026-11-25T08:00:00Z", "import", "create", "route/users"),
                entry("2026-11-25T08:00:01Z", "import", "create", "routes/x"),
            ],
        )
        .await
        .unwrap();
    store
        .commit(
            1,
            &state,
            &[
                with_before.clone(),
                entry(
                    "2026-11-25T10:00:00Z",
                    "admin-token",
                    "create",
                    "upstream/api",
                ),
            ],
        )
        .await
        .unwrap();
    store
        .commit(
            2,
            &state,
            &[
                entry("2026-11-26T00:00:00Z", "admin-token", "revoke", "key/key_1"),
                entry(
                    "2026-11-26T00:00:00Z",
                    "admin-token",
                    "delete",
                    "route/route-1",
                ),
            ],
        )
        .await
        .unwrap();

    let all = all_audit(&store).await;
    assert_eq!(all.len(), 7);
    let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let versions: Vec<u64> = all.iter().map(|e| e.version).collect();
    assert_eq!(versions, [3, 3, 2, 2, 1, 1, 1]);
    // Times come back as RFC 3339 UTC; JSON as written.
    assert_eq!(all[3].time, "2026-11-25T09:00:02Z");
    assert_eq!(all[3].before, with_before.before);
    assert_eq!(all[3].after, None);
    assert_eq!(all[4].after, Some(json!({"path": "/x", "n": 1})));
    assert_eq!(all[6].time, "2026-11-25T08:00:00Z");
    assert_eq!(
        (
            all[0].actor.as_str(),
            all[0].action.as_str(),
            all[0].resource.as_str()
        ),
        ("admin-token", "delete", "route/route-1")
    );

    // Pages of 3: 7 = 3 + 3 + 1, each `next` the last id of its page.
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page = store
            .audit(&AuditQuery {
                limit: Some(3),
                before,
                ..Default::default()
            })
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.entries.iter().map(|e| e.id));
        match page.next {
            Some(n) => {
                assert_eq!(page.entries.len(), 3);
                assert_eq!(Some(&n), seen.last());
                before = Some(n);
            }
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, ids.clone()));

    let q = |f: &dyn Fn(&mut AuditQuery)| {
        let mut q = AuditQuery::default();
        f(&mut q);
        filtered(&store, q)
    };
    let got = q(&|q| q.action = Some("create".into())).await;
    assert_eq!(got.len(), 3);
    let got = q(&|q| q.actor = Some("admin-token".into())).await;
    assert_eq!(got.len(), 3);
    let got = q(&|q| q.resource = Some("route".into())).await;
    let resources: Vec<&str> = got.iter().map(|e| e.resource.as_str()).collect();
    assert_eq!(resources, ["route/route-1", "route/users", "route/users"]);
    let got = q(&|q| q.resource = Some("route/users".into())).await;
    assert_eq!(got.len(), 2);
    assert!(q(&|q| q.resource = Some("rou".into())).await.is_empty());
    let got = q(&|q| q.since = Some("2026-11-25T10:00:00Z".into())).await;
    assert_eq!(got.len(), 3, "inclusive lower bound");
    let got = q(&|q| q.until = Some("2026-11-25T08:00:01Z".into())).await;
    assert_eq!(got.len(), 3, "inclusive upper bound");
    let got = q(&|q| {
        q.since = Some("2026-11-25T08:00:00Z".into());
        q.until = Some("2026-11-25T10:00:00Z".into());
        q.actor = Some("import".into());
        q.limit = Some(2);
    })
    .await;
    assert_eq!(got.len(), 2);
    let got = q(&|q| {
        q.action = Some("create".into());
        q.before = Some(ids[2]);
    })
    .await;
    assert_eq!(got.len(), 2);
}

/// One page for `q`, checked against [`AuditQuery::matches`] over all entries.
async fn filtered(store: &PgStore, q: AuditQuery) -> Vec<AuditEntry> {
    let page = store.audit(&q).await.unwrap();
    let mut want: Vec<u64> = all_matching(&q, store).await;
    want.truncate(q.page_size());
    let got: Vec<u64> = page.entries.iter().map(|e| e.id).collect();
    assert_eq!(
        got, want,
        "the database agrees with AuditQuery::matches: {q:?}"
    );
    page.entries
}

/// Ids of every entry passing `q` by [`AuditQuery::matches`], newest first.
async fn all_matching(q: &AuditQuery, store: &PgStore) -> Vec<u64> {
    all_audit(store)
        .await
        .into_iter()
        .filter(|e| q.matches(e))
        .map(|e| e.id)
        .collect()
}

/// Every call on `store` fails as Unavailable, each within `limit`.
async fn every_call_is_unavailable(store: &PgStore, limit: Duration) {
    let state = sample_state();
    let mut messages = Vec::new();
    macro_rules! check {
        ($name:literal, $call:expr) => {{
            let start = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(30), $call)
                .await
                .unwrap_or_else(|_| panic!("{} hung", $name));
            let took = start.elapsed();
            match r {
                Err(StoreError::Unavailable(m)) => messages.push(m),
                other => panic!("{}: expected Unavailable, got {other:?}", $name),
            }
            assert!(took < limit, "{} took {took:?}", $name);
        }};
    }
    check!("ping", store.ping());
    check!("migrate", store.migrate());
    check!("load", store.load());
    check!("version", store.version());
    check!("commit", store.commit(0, &state, &[]));
    check!("audit", store.audit(&AuditQuery::default()));
    for m in &messages {
        assert!(m.contains(store.target()), "names the database: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_fails_fast_as_unavailable() {
    let store = PgStore::new("postgres://postgres@127.0.0.1:1/flexgate").unwrap();
    every_call_is_unavailable(&store, Duration::from_secs(3)).await;
    match store.version().await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("cannot connect"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_fails_within_seconds() {
    // Accepts connections and never says a word (a frozen server).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let store = PgStore::new(&format!("postgres://postgres@127.0.0.1:{port}/flexgate")).unwrap();
    every_call_is_unavailable(&store, Duration::from_millis(3500)).await;
    held.abort();
}

/// A TCP relay to PostgreSQL that can freeze: connections stay open but no
/// byte goes through any more.
async fn freezable_relay(to: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let frozen = std::sync::Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&to).await else {
                continue;
            };
            let (f1, f2) = (f.clone(), f.clone());
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let pump = |frozen: std::sync::Arc<AtomicBool>| {
                move |mut r: tokio::net::tcp::OwnedReadHalf,
                      mut w: tokio::net::tcp::OwnedWriteHalf| async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        while frozen.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            };
            tokio::spawn(pump(f1)(cr, sw));
            tokio::spawn(pump(f2)(sr, cw));
        }
    });
    (port, frozen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_freezing_mid_use_fails_within_seconds() {
    if server() != DEFAULT_SERVER {
        eprintln!("(the relay test runs against 127.0.0.1:5432 only; skipped)");
        return;
    }
    let Some((db, _)) = migrated().await else {
        return;
    };
    let (port, frozen) = freezable_relay("127.0.0.1:5432".into()).await;
    let store = PgStore::new(&format!(
        "postgres://postgres@127.0.0.1:{port}/{}",
        db.name()
    ))
    .unwrap();
    assert_eq!(store.version().await, Ok(0), "works through the relay");
    frozen.store(true, std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    match store.version().await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("did not answer"), "{m}"),
        other => panic!("{other:?}"),
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // The hung connection was discarded: the next call does not wait on it.
    let start = Instant::now();
    assert!(matches!(
        store.load().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    frozen.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        store.version().await,
        Ok(0),
        "recovers once the server answers"
    );
}

fn flexgate(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flexgate"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("FLEXGATE_CONFIG");
    cmd
}

fn run(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.output().expect("run flexgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrate_command_is_idempotent() {
    let Some(db) = TestDb::create() else { return };
    let url = db.url();
    let (code, out, err) = run(&mut flexgate(&["migrate", "--database-url", &url]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "schema at version 3 (applied 3 migrations)");
    let (code, out, err) = run(&mut flexgate(&["migrate", "--database-url", &url]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "schema at version 3 (up to date)");

    // DATABASE_URL, then the config file's database.url.
    let (code, out, err) = run(flexgate(&["migrate"]).env("DATABASE_URL", &url));
    assert_eq!(
        (code, out.trim()),
        (0, "schema at version 3 (up to date)"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("flexgate.yaml");
    std::fs::write(&cfg, format!("database:\n  url: \"{url}\"\n")).unwrap();
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = run(&mut flexgate(&["migrate", "-c", cfg]));
    assert_eq!(
        (code, out.trim()),
        (0, "schema at version 3 (up to date)"),
        "{err}"
    );

    // No URL anywhere.
    std::fs::write(dir.path().join("empty.yaml"), "proxy:\n  port: 3000\n").unwrap();
    let empty = dir.path().join("empty.yaml");
    let (code, _, err) = run(&mut flexgate(&["migrate", "-c", empty.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(err.contains("no database URL"), "{err}");

    // Unreachable and malformed URLs.
    let (code, _, err) = run(&mut flexgate(&[
        "migrate",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/x",
    ]));
    assert_eq!(code, 1);
    assert!(
        err.contains("unavailable") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    let (code, _, err) = run(&mut flexgate(&[
        "migrate",
        "--database-url",
        "postgres://h:port/x",
    ]));
    assert_eq!(code, 1);
    assert!(err.contains("invalid database URL"), "{err}");

    // A newer schema: the clear error, exit 1.
    db.client()
        .await
        .execute(
            "INSERT INTO flexgate_schema_history (version, name, checksum) VALUES (4, 'next', 'x')",
            &[],
        )
        .await
        .unwrap();
    let (code, _, err) = run(&mut flexgate(&["migrate", "--database-url", &url]));
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "database schema is at version 4 but this flexgate knows up to 3; upgrade flexgate"
        ),
        "{err}"
    );
}
