//! `Store::search_catalog` for every backend: the portable SQL of one
//! candidate query (equality, ranges, `LIKE … ESCAPE`, row values; `$N`
//! placeholders), and how a search is split into queries each served by an
//! index in the order it returns: one department at a time, merged; or, for
//! a sample, by the sample's index with the departments checked here.

use super::StoreError;
use crate::domain::search::{CatalogQuery, FoundFile, NameField, SearchKey, SearchOrder};

/// One query of a search, as a backend runs it: `department` narrows it to
/// one department (else the query's departments are not asked).
#[async_trait::async_trait]
pub(super) trait SearchOnce: Sync {
    async fn search_once(
        &self,
        q: &CatalogQuery,
        department: Option<&str>,
        after: Option<&SearchKey>,
        limit: u32,
    ) -> Result<Vec<FoundFile>, StoreError>;
}

/// [`Store::search_catalog`](super::Store::search_catalog) in queries of `db`.
pub(super) async fn search_catalog(
    db: &dyn SearchOnce,
    query: &CatalogQuery,
    after: Option<&SearchKey>,
    limit: u32,
) -> Result<Vec<FoundFile>, StoreError> {
    let order = query.order();
    match &query.departments {
        Some(list) if list.is_empty() => Ok(Vec::new()),
        // Few files share a sample: its index finds them; the departments are checked here.
        Some(list) if query.sample_id.is_some() => {
            let wanted: std::collections::HashSet<&str> = list.iter().map(String::as_str).collect();
            let mut found = Vec::new();
            let mut from = after.cloned();
            loop {
                let page = db.search_once(query, None, from.as_ref(), limit).await?;
                let full = page.len() == limit as usize;
                from = page.last().map(|f| SearchKey::of(order, &f.file));
                found.extend(page.into_iter().filter(|f| wanted.contains(f.file.department.as_str())));
                if found.len() >= limit as usize || !full {
                    found.truncate(limit as usize);
                    return Ok(found);
                }
            }
        }
        // One department at a time, each in order from its own index, merged.
        Some(list) => {
            let mut found = Vec::new();
            for d in list {
                found.extend(db.search_once(query, Some(d), after, limit).await?);
            }
            found.sort_by_cached_key(|f| SearchKey::of(order, &f.file));
            found.truncate(limit as usize);
            Ok(found)
        }
        None => db.search_once(query, None, after, limit).await,
    }
}

/// A value bound to a search query.
pub(super) enum Arg {
    Text(String),
    Int(i64),
}

/// The SQL of one search query and its arguments, in placeholder order:
/// portable (equality, ranges, `LIKE … ESCAPE`, row-value comparison), each
/// shape served by an index in the order it returns.
pub(super) fn search_sql(q: &CatalogQuery, department: Option<&str>, after: Option<&SearchKey>, limit: u32) -> (String, Vec<Arg>) {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Arg> = Vec::new();
    let mut arg = |a: Arg| {
        args.push(a);
        format!("${}", args.len())
    };
    if let Some(d) = department {
        conds.push(format!("department = {}", arg(Arg::Text(d.to_string()))));
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
            "SELECT file_id, path, department, size, sha256, submitted_ns, extra, sample_id FROM catalog {filter}ORDER BY {order} LIMIT {limit}"
        ),
        args,
    )
}
