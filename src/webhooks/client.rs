//! The outbound POST of one delivery attempt (placeholder until merged).

use std::time::Duration;

pub struct Request<'a> {
    pub url: &'a str,
    pub body: &'a [u8],
    pub headers: Vec<(String, String)>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub policy: &'a crate::config::SsrfPolicy,
    pub allowed_hosts: &'a [String],
}

#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub snippet: String,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Transport(String),
}

pub const SNIPPET_BYTES: usize = 1024;

pub async fn post(_req: Request<'_>) -> Result<Response, Error> {
    Err(Error::Transport("not yet".into()))
}
