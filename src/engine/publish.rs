//! Publishing catalog versions, and reading the one in force on a date.

use std::sync::Arc;

use crate::domain::CatalogVersionSpec;
use crate::domain::FieldError;

use crate::engine::partition::CATALOG;
use crate::engine::{days, published_versions, EngineError, PartitionEngine};

impl PartitionEngine {
    /// Publishes a catalog version. It must take effect after the latest one and after
    /// every usage date already accepted, so nothing already priced changes version.
    pub fn publish_catalog(&self, spec: &CatalogVersionSpec) -> Result<u16, EngineError> {
        let mut guard = self.catalog.write().unwrap_or_else(|p| p.into_inner());
        let latest = self.latest_usage_day.load(std::sync::atomic::Ordering::Acquire);
        if days(spec.effective_from) <= latest {
            return Err(EngineError::Invalid(FieldError::new(
                "effective_from",
                format!(
                    "usage dated up to {} is already priced; a new version must take effect after it",
                    chrono::NaiveDate::from_num_days_from_ce_opt((latest + 719_163) as i32)
                        .map_or_else(|| "?".into(), |d| d.to_string())
                ),
            )));
        }
        let mut next = (**guard).clone();
        let version = next.publish(spec).map_err(EngineError::Invalid)?;
        let mut published = published_versions(&self.documents)?;
        published.push(spec.clone());
        self.documents
            .write_json(CATALOG, &published)
            .map_err(|e| EngineError::Unavailable(format!("cannot keep the new catalog version: {e}")))?;
        *guard = Arc::new(next);
        tracing::info!(partition = %self.id, version, effective_from = %spec.effective_from, "catalog version published");
        Ok(version)
    }

    /// The catalog version in force on `date` (today when `None`), in its published shape.
    pub fn catalog_at(&self, date: Option<chrono::NaiveDate>) -> Result<CatalogVersionSpec, EngineError> {
        let date = date.unwrap_or_else(|| self.local_date(self.now()));
        let catalog = self.catalog();
        let version = catalog.version_at(date).ok_or_else(|| {
            EngineError::UnknownCatalogVersion(format!("no catalog version is in force on {date}"))
        })?;
        Ok(catalog.spec(version))
    }
}
