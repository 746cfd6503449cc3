//! The embedded delivery store (placeholder until merged).
use super::delivery::*;
use crate::store::StoreError;
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
pub struct JournalStore;
impl JournalStore {
    pub fn open(_p: &Path) -> Result<JournalStore, StoreError> {
        Ok(JournalStore)
    }
    pub fn path_beside(c: &Path) -> PathBuf {
        c.with_file_name("flexgate-webhooks.jsonl")
    }
}
#[async_trait]
impl DeliveryStore for JournalStore {
    fn kind(&self) -> &'static str {
        "journal"
    }
    async fn enqueue(&self, _n: &[Delivery]) -> Result<usize, StoreError> {
        todo!()
    }
    async fn lease_due(
        &self,
        _w: &[String],
        _n: u64,
        _l: u64,
        _m: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        todo!()
    }
    async fn finish(&self, _d: &Delivery) -> Result<(), StoreError> {
        todo!()
    }
    async fn list(&self, _w: &str, _q: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        todo!()
    }
    async fn get(&self, _w: &str, _i: &str) -> Result<Option<Delivery>, StoreError> {
        todo!()
    }
    async fn replay(&self, _w: &str, _i: &str, _n: u64) -> Result<Option<Delivery>, StoreError> {
        todo!()
    }
    async fn pending_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        todo!()
    }
    async fn record_outcome(&self, _w: &str, _s: bool, _n: u64) -> Result<Option<u64>, StoreError> {
        todo!()
    }
    async fn prune(&self, _l: &[String], _n: u64) -> Result<(), StoreError> {
        todo!()
    }
}
