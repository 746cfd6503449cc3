//! `logging:` — sampling rates are shares.

use crate::config::model::LoggingSection;
use crate::config::ConfigError;

pub(super) fn check(e: &mut Vec<ConfigError>, lg: &LoggingSection) {
    if let Some(sm) = &lg.sampling {
        for (k, v) in [
            ("successRate", sm.success_rate),
            ("errorRate", sm.error_rate),
        ] {
            if v.is_some_and(|x| !(0.0..=1.0).contains(&x)) {
                e.push(ConfigError::new(
                    format!("logging.sampling.{k}"),
                    "must be between 0.0 and 1.0",
                ));
            }
        }
    }
}
