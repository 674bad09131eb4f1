//! Which entries a scoped purge removes: by namespace, model, tenant and
//! creation time, in any combination.

use std::fmt;
use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};

use super::CachedResponse;
use crate::key::Tenant;

/// A selection of entries; every condition given must hold. An empty
/// filter selects every entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// The request's `x-relaycache-namespace`.
    pub namespace: Option<String>,
    /// The model the answer names.
    pub model: Option<String>,
    /// The tenant, by id (see `relaycache key tenant`).
    pub tenant: Option<Tenant>,
    /// Created at or after this time.
    pub created_after: Option<SystemTime>,
    /// Created strictly before this time.
    pub created_before: Option<SystemTime>,
}

/// A filter that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A parameter this filter does not know.
    #[error(
        "unknown purge filter {0:?}; use namespace, model, tenant, created_after or created_before"
    )]
    Unknown(String),
    /// A tenant that is not 64 hex characters.
    #[error("tenant must be the 64 hex characters `relaycache key tenant` prints")]
    Tenant,
    /// A time that is not RFC 3339.
    #[error("{0} must be an RFC 3339 time, such as 2026-12-01T00:00:00Z")]
    Time(&'static str),
    /// A parameter given twice or empty.
    #[error("{0} is given twice or empty")]
    Repeated(String),
}

impl EntryFilter {
    /// Whether the filter selects every entry.
    pub fn is_everything(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `entry` is selected.
    pub fn matches(&self, entry: &CachedResponse) -> bool {
        self.matches_parts(&EntryScope {
            namespace: entry.namespace.as_deref(),
            model: entry.model.as_deref(),
            tenant: entry.tenant.as_ref(),
            created: entry.created,
        })
    }

    /// Whether an entry with this scope is selected. An entry stored
    /// before entries carried their scope has no tenant, and is selected by
    /// a tenant filter only through the other conditions never; it is
    /// removed by time, model or a full purge.
    pub fn matches_parts(&self, scope: &EntryScope<'_>) -> bool {
        let equal = |wanted: &Option<String>, found: Option<&str>| {
            wanted.as_deref().is_none_or(|wanted| Some(wanted) == found)
        };
        equal(&self.namespace, scope.namespace)
            && equal(&self.model, scope.model)
            && self
                .tenant
                .as_ref()
                .is_none_or(|wanted| Some(wanted) == scope.tenant)
            && self
                .created_after
                .is_none_or(|after| scope.created >= after)
            && self
                .created_before
                .is_none_or(|before| scope.created < before)
    }

    /// Reads `namespace=…&model=…&tenant=…&created_after=…&created_before=…`
    /// (any of them; values percent-encoded).
    pub fn from_query(query: &str) -> Result<Self, FilterError> {
        let mut filter = Self::default();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let repeated = || FilterError::Repeated(name.to_string());
            if value.is_empty() {
                return Err(repeated());
            }
            match name.as_ref() {
                "namespace" => set_once(&mut filter.namespace, value.into_owned(), repeated)?,
                "model" => set_once(&mut filter.model, value.into_owned(), repeated)?,
                "tenant" => {
                    let tenant = Tenant::from_id(&value).ok_or(FilterError::Tenant)?;
                    set_once(&mut filter.tenant, tenant, repeated)?;
                }
                "created_after" => {
                    let time = parse_time(&value, "created_after")?;
                    set_once(&mut filter.created_after, time, repeated)?;
                }
                "created_before" => {
                    let time = parse_time(&value, "created_before")?;
                    set_once(&mut filter.created_before, time, repeated)?;
                }
                other => return Err(FilterError::Unknown(other.to_string())),
            }
        }
        Ok(filter)
    }

    /// The filter as a query string, as [`EntryFilter::from_query`] reads it.
    pub fn to_query(&self) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(namespace) = &self.namespace {
            query.append_pair("namespace", namespace);
        }
        if let Some(model) = &self.model {
            query.append_pair("model", model);
        }
        if let Some(tenant) = &self.tenant {
            query.append_pair("tenant", &tenant.id());
        }
        if let Some(after) = self.created_after {
            query.append_pair("created_after", &format_time(after));
        }
        if let Some(before) = self.created_before {
            query.append_pair("created_before", &format_time(before));
        }
        query.finish()
    }
}

/// What a filter looks at in an entry, wherever it is stored.
#[derive(Debug, Clone, Copy)]
pub struct EntryScope<'a> {
    /// The request's namespace.
    pub namespace: Option<&'a str>,
    /// The answer's model.
    pub model: Option<&'a str>,
    /// The tenant, when known.
    pub tenant: Option<&'a Tenant>,
    /// When the upstream answered.
    pub created: SystemTime,
}

/// The conditions in words, for logs and summaries.
impl fmt::Display for EntryFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_everything() {
            return f.write_str("every entry");
        }
        f.write_str(&self.to_query().replace('&', " "))
    }
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    repeated: impl FnOnce() -> FilterError,
) -> Result<(), FilterError> {
    if slot.is_some() {
        return Err(repeated());
    }
    *slot = Some(value);
    Ok(())
}

/// Reads an RFC 3339 time.
pub fn parse_time(text: &str, name: &'static str) -> Result<SystemTime, FilterError> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| SystemTime::from(time.with_timezone(&Utc)))
        .map_err(|_| FilterError::Time(name))
}

/// Writes an RFC 3339 time in UTC, to the millisecond.
pub fn format_time(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scope(created: SystemTime) -> EntryScope<'static> {
        EntryScope {
            namespace: Some("eval"),
            model: Some("gpt-4o"),
            tenant: None,
            created,
        }
    }

    #[test]
    fn every_condition_must_hold() {
        let now = SystemTime::now();
        let filter = EntryFilter::from_query(&format!(
            "namespace=eval&model=gpt-4o&created_before={}",
            format_time(now)
        ))
        .unwrap();
        assert!(filter.matches_parts(&scope(now - Duration::from_secs(5))));
        assert!(!filter.matches_parts(&scope(now + Duration::from_secs(5))));
        let other_model = EntryScope {
            model: Some("gpt-4o-mini"),
            ..scope(now - Duration::from_secs(5))
        };
        assert!(!filter.matches_parts(&other_model));
        let no_namespace = EntryScope {
            namespace: None,
            ..scope(now - Duration::from_secs(5))
        };
        assert!(!filter.matches_parts(&no_namespace));
        assert!(EntryFilter::default().matches_parts(&no_namespace));
    }

    #[test]
    fn a_query_round_trips_and_bad_ones_say_what_is_wrong() {
        let tenant = "ab".repeat(32);
        let query =
            format!("namespace=team%20a&tenant={tenant}&created_after=2026-12-01T00:00:00Z");
        let filter = EntryFilter::from_query(&query).unwrap();
        assert_eq!(filter.namespace.as_deref(), Some("team a"));
        assert_eq!(filter.tenant.as_ref().map(Tenant::id), Some(tenant));
        assert_eq!(EntryFilter::from_query(&filter.to_query()).unwrap(), filter);
        for (bad, says) in [
            ("team=a", "unknown purge filter"),
            ("tenant=xyz", "64 hex"),
            ("created_before=yesterday", "RFC 3339"),
            ("model=a&model=b", "twice"),
            ("model=", "empty"),
        ] {
            let err = EntryFilter::from_query(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(EntryFilter::from_query("").unwrap().is_everything());
    }
}
