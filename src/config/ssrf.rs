//! The outbound-address policy (SSRF): which hosts and addresses upstreams
//! and the JWKS URL may reach (`security.allowedHosts`, `blockedIPs`,
//! `allowedIPs`).

use super::model::SecuritySection;
use ipnet::IpNet;
use std::net::IpAddr;

/// The outbound-address policy (SSRF): `security.blockedIPs` plus the
/// built-in cloud-metadata set, minus `security.allowedIPs`.
#[derive(Clone, Debug, Default)]
pub struct SsrfPolicy {
    pub blocked: Vec<IpNet>,
    pub exempt: Vec<IpNet>,
}

/// Always blocked unless exempted: cloud metadata endpoints and link-local.
pub const METADATA_BLOCK: [&str; 3] = ["169.254.0.0/16", "fd00:ec2::254/128", "fe80::/10"];

impl SsrfPolicy {
    pub fn from_security(s: &SecuritySection) -> SsrfPolicy {
        let mut blocked: Vec<IpNet> = METADATA_BLOCK
            .iter()
            .map(|c| c.parse().expect("the built-in blocks are CIDRs"))
            .collect();
        blocked.extend(s.blocked_ips.iter().map(|c| *c.value()));
        SsrfPolicy {
            blocked,
            exempt: s.allowed_ips.iter().map(|c| *c.value()).collect(),
        }
    }

    /// `Err` names the block that refuses `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if self.exempt.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        match self.blocked.iter().find(|n| n.contains(&ip)) {
            Some(net) => Err(format!("address {ip} is blocked by the SSRF policy ({net}; see security.blockedIPs / security.allowedIPs)")),
            None => Ok(()),
        }
    }
}

/// True when `host` matches an `allowedHosts` pattern (`api.example.com`, `*.internal.corp`).
pub fn host_allowed(patterns: &[String], host: &str) -> bool {
    patterns.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        match p.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => p == host,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_host_patterns() {
        let p = vec!["api.example.com".to_string(), "*.internal.corp".to_string()];
        assert!(host_allowed(&p, "api.example.com"));
        assert!(host_allowed(&p, "billing.internal.corp"));
        assert!(!host_allowed(&p, "internal.corp"));
        assert!(!host_allowed(&p, "evil-internal.corp"));
        assert!(!host_allowed(&p, "api.primary.com"));
    }
}
