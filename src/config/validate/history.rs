//! `history:` — bounds of the request recorder's settings.

use crate::config::model::HistorySection;
use crate::config::ConfigError;

/// `history:` bounds (each error names its field).
pub(super) fn check(errs: &mut Vec<ConfigError>, h: &HistorySection) {
    let mut range = |field: &str, value: Option<u64>, min: u64, max: u64, unit: &str| {
        if let Some(v) = value {
            if v < min || v > max {
                errs.push(ConfigError::new(
                    format!("history.{field}"),
                    format!("must be {min}{unit}-{max}{unit} (got {v}{unit})"),
                ));
            }
        }
    };
    range(
        "queueSize",
        h.queue_size.map(|v| v as u64),
        1,
        10_000_000,
        "",
    );
    range("batchSize", h.batch_size.map(|v| v as u64), 1, 100_000, "");
    range(
        "flushInterval",
        h.flush_interval.map(|m| m.0),
        1,
        60_000,
        " ms",
    );
    range(
        "retentionDays",
        h.retention_days.map(u64::from),
        1,
        3_650,
        "",
    );
    range(
        "rollupRetentionDays",
        h.rollup_retention_days.map(u64::from),
        1,
        36_500,
        "",
    );
    range(
        "maintenanceInterval",
        h.maintenance_interval.map(|m| m.0),
        100,
        24 * 3_600_000,
        " ms",
    );
    if let Some(id) = &h.node_id {
        if id.trim().is_empty() || id.len() > 128 {
            errs.push(ConfigError::new(
                "history.nodeId",
                "must be 1-128 characters, not blank",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn history_bounds_name_their_field() {
        let cfg = crate::config::parse(
            "history:\n  queueSize: 0\n  batchSize: 100\n  flushInterval: 2m\n  \
             retentionDays: 0\n  maintenanceInterval: 50ms\n  nodeId: \"  \"\n",
        )
        .expect("parses");
        let paths: Vec<String> = super::super::validate(&cfg)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "history.queueSize",
                "history.flushInterval",
                "history.retentionDays",
                "history.maintenanceInterval",
                "history.nodeId"
            ]
        );
        let ok = crate::config::parse("history:\n  enabled: false\n  flushInterval: 1s\n")
            .expect("parses");
        assert!(super::super::validate(&ok).is_empty());
    }
}
