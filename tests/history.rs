//! Request history through the running binary, against the PostgreSQL at
//! 127.0.0.1:5432 (a fresh database per test): every proxied request
//! becomes one row, roll-ups agree with the rows, `/api/metrics/history`
//! serves them; a database that stalls costs no request (records are
//! dropped and counted instead); day partitions are created ahead and
//! dropped after the retention. Outside CI an unreachable PostgreSQL skips
//! the test with a loud message; with `CI=true` it fails.

mod common;
use common::pg::{Sql, TestDb};
use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const AUTH: (&str, &str) = ("Authorization", "Bearer test-admin-token");

/// A sample of the gateway's `/metrics` (summed over label values).
fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = request(gw.admin_port, "GET", "/metrics", &[], b"").text();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metric_labelled(gw: &Gateway, name: &str, label: &str) -> f64 {
    let text = request(gw.admin_port, "GET", "/metrics", &[], b"").text();
    let prefix = format!("{name}{{{label}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Sends `per_thread` requests on each of `threads` keep-alive connections
/// (reconnecting when the gateway says `Connection: close`); `path_of(thread, i)`
/// picks the target. Returns every status.
fn traffic(
    port: u16,
    threads: usize,
    per_thread: usize,
    path_of: fn(usize, usize) -> String,
) -> Vec<u16> {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut statuses = Vec::with_capacity(per_thread);
                let mut client = Client::connect(port);
                for i in 0..per_thread {
                    let path = path_of(t, i);
                    let r = client
                        .request("GET", &path, &[("User-Agent", "history-test/1")], b"")
                        .unwrap_or_else(|e| panic!("request {i} of thread {t}: {e}"));
                    statuses.push(r.status);
                    if r.header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    {
                        client = Client::connect(port);
                    }
                }
                statuses
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|w| w.join().expect("traffic thread"))
        .collect()
}

fn wait_for(gw: &Gateway, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}; gateway log:\n{}", gw.log());
}

fn config(up_ok: &TestUpstream, up_fail: &TestUpstream, db: &TestDb, history: &str) -> String {
    format!(
        "database:\n  url: \"{}\"\nhistory:\n{history}upstreams:\n  - name: ok\n    url: \"{}\"\n  - name: fail\n    url: \"{}\"\nroutes:\n  - id: ok\n    path: /ok/*\n    upstream: ok\n  - id: fail\n    path: /fail/*\n    upstream: fail\nlogging:\n  accessLog: false\n",
        db.url(),
        up_ok.url(),
        up_fail.url()
    )
}

fn sum(rows: &[serde_json::Value], field: &str) -> i64 {
    rows.iter().map(|b| b[field].as_i64().unwrap_or(0)).sum()
}

#[test]
fn every_request_is_a_row_and_the_rollups_and_api_agree() {
    let Some(db) = TestDb::create() else { return };
    let up_ok = TestUpstream::start("ok", Behavior::Ok);
    let up_fail = TestUpstream::start("fail", Behavior::Status(500));
    let history = "  batchSize: 500\n  flushInterval: 100ms\n  maintenanceInterval: 500ms\n  nodeId: node-a\n";
    let gw = Gateway::start("", &config(&up_ok, &up_fail, &db, history));

    // 20,000 requests on 4 connections at a time: every 4th to the failing route.
    let statuses = traffic(gw.port, 4, 5_000, |t, i| {
        if (t * 5_000 + i) % 4 == 0 {
            format!("/fail/item?n={i}")
        } else {
            format!("/ok/item?n={i}")
        }
    });
    let sent = statuses.len() as f64;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 15_000);
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 5_000);

    wait_for(&gw, "every row written", Duration::from_secs(20), || {
        metric(&gw, "flexgate_history_written_total") >= sent
    });
    assert_eq!(metric(&gw, "flexgate_history_written_total"), sent);
    assert_eq!(metric(&gw, "flexgate_history_dropped_total"), 0.0);
    let sql = db.sql();
    let counts: BTreeMap<(String, i16), i64> = sql
        .rows("SELECT route_id, status, count(*) FROM flexgate_request_log GROUP BY 1, 2")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([(("fail".into(), 500), 5_000), (("ok".into(), 200), 15_000)])
    );
    // Paths without their query, the columns a user looks for filled in.
    assert_eq!(
        sql.int(
            "SELECT count(*) FROM flexgate_request_log WHERE path IN ('/ok/item', '/fail/item') \
             AND method = 'GET' AND node_id = 'node-a' AND upstream = route_id \
             AND user_agent = 'history-test/1' AND client_ip = '127.0.0.1' \
             AND length(request_id) > 0 AND duration_ms > 0 AND bytes_out > 0 \
             AND time > now() - interval '10 minutes'"
        ),
        20_000
    );
    assert_eq!(
        sql.int("SELECT count(DISTINCT request_id) FROM flexgate_request_log"),
        20_000
    );

    // Roll-ups (hourly and daily), recomputed by the maintenance task.
    for table in [
        "flexgate_request_stats_hourly",
        "flexgate_request_stats_daily",
    ] {
        wait_for(
            &gw,
            &format!("{table} to count every row"),
            Duration::from_secs(20),
            || {
                sql.int(&format!(
                    "SELECT coalesce(sum(requests), 0)::bigint FROM {table} WHERE route_id = '*'"
                )) == 20_000
            },
        );
        let by_route: BTreeMap<String, (i64, i64, i64)> = sql
            .rows(&format!(
                "SELECT route_id, sum(requests)::bigint, sum(errors)::bigint, \
                 sum(client_errors)::bigint FROM {table} GROUP BY 1"
            ))
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
            .collect();
        assert_eq!(
            by_route,
            BTreeMap::from([
                ("*".into(), (20_000, 5_000, 0)),
                ("fail".into(), (5_000, 5_000, 0)),
                ("ok".into(), (15_000, 0, 0)),
            ]),
            "{table}"
        );
        assert_eq!(
            sql.int(&format!(
                "SELECT count(*) FROM {table} WHERE NOT (p50_ms <= p95_ms AND p95_ms <= p99_ms \
                 AND p50_ms > 0)"
            )),
            0,
            "{table}: percentiles are ordered"
        );
    }

    // The admin API serves the same figures.
    let from = sql.text(
        "SELECT to_char((now() - interval '2 hours') AT TIME ZONE 'UTC', \
         'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    );
    let to = sql.text(
        "SELECT to_char((now() + interval '1 hour') AT TIME ZONE 'UTC', \
         'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    );
    for granularity in ["hour", "day"] {
        let r = request(
            gw.admin_port,
            "GET",
            &format!("/api/metrics/history?from={from}&to={to}&granularity={granularity}"),
            &[AUTH],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["granularity"], granularity);
        assert_eq!(body["recording"], true);
        let overall = body["overall"].as_array().expect("overall series");
        assert_eq!(sum(overall, "requests"), 20_000, "{body}");
        assert_eq!(sum(overall, "errors"), 5_000, "{body}");
        let fail = body["routes"]["fail"].as_array().expect("fail series");
        let ok = body["routes"]["ok"].as_array().expect("ok series");
        assert_eq!((sum(fail, "requests"), sum(fail, "errors")), (5_000, 5_000));
        assert_eq!((sum(ok, "requests"), sum(ok, "errors")), (15_000, 0));
        assert!(ok[0]["p99Ms"].as_f64().unwrap_or(0.0) >= ok[0]["p50Ms"].as_f64().unwrap_or(1e9));
        assert!(fail[0]["errorRate"] == 100.0, "{body}");
        // The same through GET /api/metrics with a range.
        let same = request(
            gw.admin_port,
            "GET",
            &format!("/api/metrics?from={from}&to={to}&granularity={granularity}"),
            &[AUTH],
            b"",
        );
        assert_eq!(same.status, 200, "{}", same.text());
        assert_eq!(same.json()["overall"], body["overall"]);
    }

    // Bad input is a 400 naming the parameter.
    for (query, parameter) in [
        ("from=yesterday", "from"),
        ("granularity=minute", "granularity"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    ] {
        let r = request(
            gw.admin_port,
            "GET",
            &format!("/api/metrics/history?{query}"),
            &[AUTH],
            b"",
        );
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        assert_eq!(r.json()["details"][0]["path"], parameter, "{query}");
    }
}

#[test]
fn a_stalled_database_costs_no_request_and_every_record_is_accounted_for() {
    let Some(db) = TestDb::create() else { return };
    let up_ok = TestUpstream::start("ok", Behavior::Ok);
    let up_fail = TestUpstream::start("fail", Behavior::Status(500));
    let history =
        "  queueSize: 16\n  batchSize: 8\n  flushInterval: 20ms\n  maintenanceInterval: 1s\n";
    let gw = Gateway::start("", &config(&up_ok, &up_fail, &db, history));
    let sql = db.sql();
    wait_for(&gw, "today's partition", Duration::from_secs(10), || {
        sql.int(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'flexgate_request_log'::regclass",
        ) >= 3
    });

    // The writer's COPY waits behind this lock: the queue fills up.
    let blocker = db.sql();
    blocker.exec("BEGIN; LOCK TABLE flexgate_request_log IN ACCESS EXCLUSIVE MODE;");
    let started = Instant::now();
    let statuses = traffic(gw.port, 2, 1_000, |_, i| format!("/ok/item?n={i}"));
    let took = started.elapsed();
    let sent = statuses.len() as f64;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request succeeds: {:?}",
        statuses
            .iter()
            .filter(|s| **s != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
    let dropped_while_stalled = metric_labelled(
        &gw,
        "flexgate_history_dropped_total",
        "reason=\"queue_full\"",
    );
    assert!(
        dropped_while_stalled > 0.0,
        "a full queue drops records (sent {sent} in {took:?})"
    );
    blocker.exec("ROLLBACK");

    // Every record is written or counted as dropped, and the rows are there.
    wait_for(
        &gw,
        "written + dropped == sent",
        Duration::from_secs(20),
        || {
            metric(&gw, "flexgate_history_written_total")
                + metric(&gw, "flexgate_history_dropped_total")
                == sent
        },
    );
    let written = metric(&gw, "flexgate_history_written_total");
    assert!(written > 0.0, "the writer resumed after the stall");
    assert_eq!(
        sql.int("SELECT count(*) FROM flexgate_request_log") as f64,
        written
    );
}

#[test]
fn day_partitions_are_created_ahead_and_dropped_after_the_retention() {
    let Some(db) = TestDb::create() else { return };
    let up_ok = TestUpstream::start("ok", Behavior::Ok);
    let up_fail = TestUpstream::start("fail", Behavior::Status(500));
    let history = "  retentionDays: 3\n  maintenanceInterval: 300ms\n";
    let gw = Gateway::start("", &config(&up_ok, &up_fail, &db, history));
    let sql = db.sql();
    let partitions = || -> Vec<String> {
        sql.rows(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'flexgate_request_log'::regclass ORDER BY 1",
        )
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let day = |offset: i32| {
        sql.text(&format!(
            "SELECT to_char((now() AT TIME ZONE 'UTC')::date + {offset}, 'YYYYMMDD')"
        ))
    };
    let (today, tomorrow) = (day(0), day(1));
    wait_for(
        &gw,
        "today's and tomorrow's partitions",
        Duration::from_secs(10),
        || {
            let p = partitions();
            p.contains(&format!("flexgate_request_log_p{today}"))
                && p.contains(&format!("flexgate_request_log_p{tomorrow}"))
        },
    );
    assert_eq!(request(gw.port, "GET", "/ok/x", &[], b"").status, 200);
    wait_for(
        &gw,
        "the request in today's partition",
        Duration::from_secs(10),
        || {
            sql.int(&format!(
                "SELECT count(*) FROM flexgate_request_log_p{today}"
            )) == 1
        },
    );

    // An expired partition (with a row), one within the retention, and
    // rows outside every partition (they land in the DEFAULT one).
    let recent = day(-2);
    sql.exec(&format!(
        "CREATE TABLE flexgate_request_log_p20200101 PARTITION OF flexgate_request_log \
           FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-01-02 00:00:00+00');
         CREATE TABLE flexgate_request_log_p{recent} PARTITION OF flexgate_request_log \
           FOR VALUES FROM ('{recent}'::date::timestamp AT TIME ZONE 'UTC') \
           TO (('{recent}'::date + 1)::timestamp AT TIME ZONE 'UTC');
         INSERT INTO flexgate_request_log (time, node_id, request_id, method, path, status, \
           duration_ms, bytes_in, bytes_out) VALUES
           ('2020-01-01 12:00:00+00', 'n', 'old', 'GET', '/', 200, 1, 0, 0),
           ('2019-06-01 12:00:00+00', 'n', 'older', 'GET', '/', 200, 1, 0, 0),
           ('2099-06-01 12:00:00+00', 'n', 'future', 'GET', '/', 200, 1, 0, 0);"
    ));
    wait_for(
        &gw,
        "the expired partition dropped",
        Duration::from_secs(10),
        || !partitions().contains(&"flexgate_request_log_p20200101".to_string()),
    );
    let left = partitions();
    assert!(
        left.contains(&format!("flexgate_request_log_p{recent}")),
        "a partition within the retention stays: {left:?}"
    );
    assert!(
        left.contains(&format!("flexgate_request_log_p{today}")),
        "{left:?}"
    );
    let ids: Vec<String> = sql
        .rows("SELECT request_id FROM flexgate_request_log_default ORDER BY 1")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ids,
        ["future"],
        "expired rows outside the partitions are deleted too"
    );
    assert_eq!(
        sql.int(&format!(
            "SELECT count(*) FROM flexgate_request_log_p{today}"
        )),
        1
    );

    // A missing day partition: that day's rows wait in the DEFAULT
    // partition and move into the day's partition when it is created.
    sql.exec(&format!(
        "DROP TABLE flexgate_request_log_p{tomorrow};
         INSERT INTO flexgate_request_log (time, node_id, request_id, method, path, status, \
           duration_ms, bytes_in, bytes_out) VALUES
           (('{tomorrow}'::date::timestamp + interval '1 hour') AT TIME ZONE 'UTC', \
            'n', 'early', 'GET', '/', 200, 1, 0, 0);"
    ));
    wait_for(
        &gw,
        "tomorrow's partition again",
        Duration::from_secs(10),
        || partitions().contains(&format!("flexgate_request_log_p{tomorrow}")),
    );
    assert_eq!(
        sql.text(&format!(
            "SELECT request_id FROM flexgate_request_log_p{tomorrow}"
        )),
        "early"
    );
    assert_eq!(
        sql.int("SELECT count(*) FROM flexgate_request_log_default WHERE request_id = 'early'"),
        0
    );
}

#[test]
fn a_database_that_goes_away_costs_batches_not_requests_and_the_writer_comes_back() {
    let Some(db) = TestDb::create() else { return };
    let up_ok = TestUpstream::start("ok", Behavior::Ok);
    let up_fail = TestUpstream::start("fail", Behavior::Status(500));
    let history = "  batchSize: 50\n  flushInterval: 50ms\n";
    let gw = Gateway::start("", &config(&up_ok, &up_fail, &db, history));
    let sql = db.sql();
    let written = || metric(&gw, "flexgate_history_written_total");
    let dropped = || metric(&gw, "flexgate_history_dropped_total");
    let mut sent = 0.0;
    let mut send = |n: usize| {
        let statuses = traffic(gw.port, 1, n, |_, i| format!("/ok/item?n={i}"));
        assert!(statuses.iter().all(|s| *s == 200), "every request succeeds");
        sent += n as f64;
        sent
    };
    let total = send(200);
    wait_for(&gw, "the first rows", Duration::from_secs(10), || {
        written() == total
    });

    // The database refuses this node's history writer: its connection is
    // ended and no new one is accepted.
    let admin = Sql::connect("postgres").expect("connect to postgres");
    admin.exec(&format!(
        "ALTER DATABASE {0} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = '{0}' AND application_name = 'flexgate-history-writer';",
        db.name()
    ));
    let total = send(300);
    wait_for(
        &gw,
        "written + dropped == sent",
        Duration::from_secs(10),
        || written() + dropped() == total,
    );
    let lost = metric_labelled(
        &gw,
        "flexgate_history_dropped_total",
        "reason=\"write_failed\"",
    );
    assert!(lost > 0.0, "batches the database did not take are counted");
    assert!(metric(&gw, "flexgate_history_failed_batches_total") > 0.0);

    // Back: the writer reconnects (after its backoff) and writes again.
    admin.exec(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        db.name()
    ));
    let before = written();
    let start = Instant::now();
    while written() <= before {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the writer did not come back; log:\n{}",
            gw.log()
        );
        send(20);
        std::thread::sleep(Duration::from_millis(200));
    }
    let total = sent;
    wait_for(
        &gw,
        "written + dropped == sent",
        Duration::from_secs(10),
        || written() + dropped() == total,
    );
    assert_eq!(
        sql.int("SELECT count(*) FROM flexgate_request_log") as f64,
        written()
    );
}
