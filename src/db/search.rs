//! `Store::search_catalog` for every backend, as one portable SQL query
//! (equality, `IN`, ranges, `LIKE … ESCAPE`, row values; `$N` placeholders)
//! that an index serves in the order it returns:
//!
//! * by base name or path: the `(base_name, department)` or `(path,
//!   department)` index, read in order; the name filter and the departments
//!   are checked on the index entries alone, so a pattern that starts with a
//!   wildcard reads the index, not the table;
//! * `--since`: the `(submitted_ns, department)` index from the date on;
//! * a sample: the `sample_id` index (a few files, sorted).
//!
//! The query finds the `file_id`s first (from the index only) and then reads
//! those rows, at most `limit` of them.

use super::StoreError;
use crate::domain::search::{CatalogQuery, FoundFile, NameField, SearchKey, SearchOrder};

/// Runs a search query, as a backend binds and decodes it.
#[async_trait::async_trait]
pub(super) trait SearchOnce: Sync {
    async fn search_once(&self, sql: &str, args: Vec<Arg>) -> Result<Vec<FoundFile>, StoreError>;
}

/// [`Store::search_catalog`](super::Store::search_catalog) through `db`.
pub(super) async fn search_catalog(
    db: &dyn SearchOnce,
    query: &CatalogQuery,
    after: Option<&SearchKey>,
    limit: u32,
) -> Result<Vec<FoundFile>, StoreError> {
    if query.departments.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let (sql, args) = search_sql(query, after, limit);
    db.search_once(&sql, args).await
}

/// A value bound to a search query.
pub(super) enum Arg {
    Text(String),
    Int(i64),
}

/// The SQL of a search query and its arguments, in placeholder order.
pub(super) fn search_sql(q: &CatalogQuery, after: Option<&SearchKey>, limit: u32) -> (String, Vec<Arg>) {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Arg> = Vec::new();
    let mut arg = |a: Arg| {
        args.push(a);
        format!("${}", args.len())
    };
    if let Some(list) = &q.departments {
        let places: Vec<String> = list.iter().map(|d| arg(Arg::Text(d.clone()))).collect();
        conds.push(format!("department IN ({})", places.join(", ")));
    }
    if let Some(s) = &q.sample_id {
        conds.push(format!("sample_id = {}", arg(Arg::Text(s.clone()))));
    }
    if let Some(ns) = q.since_ns {
        conds.push(format!("submitted_ns >= {}", arg(Arg::Int(ns))));
    }
    if let Some(n) = &q.name {
        let col = match n.field {
            NameField::BaseName => "base_name",
            NameField::Path => "path",
        };
        if !n.from.is_empty() {
            conds.push(format!("{col} >= {}", arg(Arg::Text(n.from.clone()))));
        }
        if let Some(b) = &n.below {
            conds.push(format!("{col} < {}", arg(Arg::Text(b.clone()))));
        }
        conds.push(format!("{col} LIKE {} ESCAPE '\\'", arg(Arg::Text(n.like.clone()))));
    }
    match after {
        None => {}
        Some(SearchKey::BaseName(b, id)) => {
            let (b, id) = (arg(Arg::Text(b.clone())), arg(Arg::Text(id.clone())));
            conds.push(format!("(base_name, file_id) > ({b}, {id})"));
        }
        Some(SearchKey::Path(p)) => conds.push(format!("path > {}", arg(Arg::Text(p.clone())))),
        Some(SearchKey::Submitted(ns, id)) => {
            let (ns, id) = (arg(Arg::Int(*ns)), arg(Arg::Text(id.clone())));
            conds.push(format!("(submitted_ns, file_id) > ({ns}, {id})"));
        }
    }
    let order = match q.order() {
        SearchOrder::BaseName => "base_name, file_id",
        SearchOrder::Path => "path",
        SearchOrder::Submitted => "submitted_ns, file_id",
    };
    let limit = arg(Arg::Int(limit as i64));
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {} ", conds.join(" AND "))
    };
    (
        format!(
            "SELECT file_id, path, department, size, sha256, submitted_ns, extra, sample_id FROM catalog \
             WHERE file_id IN (SELECT file_id FROM catalog {filter}ORDER BY {order} LIMIT {limit}) ORDER BY {order}"
        ),
        args,
    )
}
