//! The rows of one catalog import on their way to a store: in batches, as the
//! parser produces them, so that a store can write the first rows while the
//! rest of the file is still being read.
//!
//! A store commits an import only after the stream's good end: that end is
//! the parser's word that the file had no bad row and that no file_id and
//! no path came twice in it. A bad end, or a sender gone before the end,
//! makes the store roll back and return the error.

use super::StoreError;
use crate::domain::catalog::{CatalogError, CatalogRow, Distinct};
use tokio::sync::mpsc;

/// Batches in flight between the parser and the store: enough to keep both
/// busy, few enough to bound the memory an import holds.
const IN_FLIGHT: usize = 4;

enum Item {
    Rows(Vec<CatalogRow>),
    End(Result<(), CatalogError>),
}

/// The receiving end, which [`Store::import_catalog`](super::Store::import_catalog) takes.
pub struct CatalogRows {
    rx: mpsc::Receiver<Item>,
}

/// The parser's end.
pub struct CatalogRowsSender {
    tx: mpsc::Sender<Item>,
}

impl CatalogRows {
    pub fn channel() -> (CatalogRowsSender, CatalogRows) {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        (CatalogRowsSender { tx }, CatalogRows { rx })
    }

    /// The next batch; `None` at the good end. A bad end is the parser's
    /// error; a sender dropped before the end, an error saying so.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<CatalogRow>>, StoreError> {
        match self.rx.recv().await {
            Some(Item::Rows(rows)) => Ok(Some(rows)),
            Some(Item::End(Ok(()))) => Ok(None),
            Some(Item::End(Err(e))) => Err(StoreError::Catalog(e)),
            None => Err(StoreError::Catalog(CatalogError::Io(
                "the catalog ended before its last row was read".into(),
            ))),
        }
    }

    /// Every row, once the stream has ended well.
    pub async fn collect(mut self) -> Result<Vec<CatalogRow>, StoreError> {
        let mut all = Vec::new();
        while let Some(rows) = self.next_batch().await? {
            all.extend(rows);
        }
        Ok(all)
    }
}

impl CatalogRowsSender {
    /// Hands on a batch, waiting while the store is behind. False when the
    /// store has given up (the parse should stop). Not from an async task.
    pub fn send_blocking(&self, rows: Vec<CatalogRow>) -> bool {
        self.tx.blocking_send(Item::Rows(rows)).is_ok()
    }

    /// Ends the stream: `Ok` only when every row of the whole catalog was sent.
    pub fn end_blocking(self, result: Result<(), CatalogError>) {
        // A store that already gave up has its own error to report.
        let _ = self.tx.blocking_send(Item::End(result));
    }
}

/// Rows already in memory (tests, benchmarks), checked as the parser checks
/// them: a file_id or path given twice makes the stream end badly.
impl From<Vec<CatalogRow>> for CatalogRows {
    fn from(rows: Vec<CatalogRow>) -> CatalogRows {
        let mut distinct = Distinct::default();
        let mut errors = crate::domain::catalog::RowErrors::default();
        for row in &rows {
            if let Err(m) = distinct.check(row) {
                errors.push(row.line, m);
            }
        }
        let (tx, rx) = mpsc::channel(2);
        // The channel has room for both items.
        let _ = tx.try_send(Item::Rows(rows));
        let _ = tx.try_send(Item::End(errors.into_result(())));
        CatalogRows { rx }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::CatalogFile;
    use crate::names::{CatalogPath, DirId, FileId};

    fn row(line: usize, id: &str, path: &str) -> anyhow::Result<CatalogRow> {
        Ok(CatalogRow {
            line,
            file: CatalogFile {
                file_id: FileId::parse(id)?,
                path: CatalogPath::parse(path)?,
                department: DirId::parse("RH-KGA")?,
                size: 1,
                sha256: "a".repeat(64),
                submitted_ns: 0,
                extra: String::new(),
            },
            sample_id: None,
        })
    }

    #[tokio::test]
    async fn rows_in_memory_end_well_only_when_distinct() -> anyhow::Result<()> {
        let good = CatalogRows::from(vec![row(2, "F1", "a/x")?, row(3, "F2", "a/y")?]);
        anyhow::ensure!(good.collect().await?.len() == 2);
        let twice = CatalogRows::from(vec![row(2, "F1", "a/x")?, row(3, "F2", "a/x")?, row(4, "F1", "b/z")?]);
        match twice.collect().await {
            Err(StoreError::Catalog(CatalogError::Rows { rows, total: 2 })) => {
                let lines: Vec<usize> = rows.iter().map(|(l, _)| *l).collect();
                anyhow::ensure!(lines == [3, 4], "{rows:?}");
            }
            other => anyhow::bail!("expected both repeats refused: {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_sender_gone_before_the_end_is_an_error() -> anyhow::Result<()> {
        let (tx, mut rows) = CatalogRows::channel();
        std::thread::spawn(move || {
            tx.send_blocking(Vec::new());
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread"))?;
        anyhow::ensure!(rows.next_batch().await?.is_some());
        anyhow::ensure!(matches!(rows.next_batch().await, Err(StoreError::Catalog(CatalogError::Io(_)))));
        Ok(())
    }
}
