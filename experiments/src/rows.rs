//! The results table: one row of metrics per run and epoch, written and read as CSV with polars. The
//! runner saves it beside the checkpoints to resume a run; the reports summarise it. Book:
//! "Experiments".

use advtrain::{Error, Result};
use polars::prelude::{Column, CsvReadOptions, CsvWriter, DataFrame, SerReader, SerWriter};
use std::path::Path;

/// One row of the results table: a run's metrics after one epoch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochRow {
    pub experiment: String,
    pub method: String,
    /// The method's radius (`Hyper::eps`); the default for methods without one.
    pub eps: f64,
    pub seed: u64,
    pub epoch: usize,
    pub train_loss: f64,
    pub dev_accuracy: f64,
    pub test_accuracy: f64,
    /// Test accuracy under FGSM / PGD-10 (L-infinity, `attack_eps`, pixels kept in [0, 1]); NaN
    /// where not measured. (Tables written before 2026-12-02 attacked without the [0, 1] box.)
    pub fgsm_accuracy: f64,
    pub pgd_accuracy: f64,
    pub passes_forward: usize,
    pub passes_backward: usize,
    pub seconds: f64,
    /// Test accuracy under PGD-10 in the per-image L2 ball of the training radius, pixels kept in
    /// [0, 1]; NaN where not measured (and in tables written before the column existed).
    pub pgd_l2_accuracy: f64,
    /// How many distinct classes the model predicts on the test set: 1 means the run collapsed to a
    /// constant predictor (NaN in tables written before the column existed).
    pub predicted_classes: f64,
    /// How many classes the task has (NaN in tables written before the column existed).
    pub classes: f64,
}

/// A training loss at or above this fraction of `ln C` (a uniform guess over `C` classes) means the
/// model learned next to nothing: [`EpochRow::collapsed`].
pub const CHANCE_LOSS_FRACTION: f64 = 0.95;

impl EpochRow {
    /// Whether the run collapsed: it predicts one class for every test example (of a task with
    /// several), or its training loss stayed at chance level (at least [`CHANCE_LOSS_FRACTION`] of
    /// `ln C`), where a model that predicts two classes now and then is no better than a guess.
    pub fn collapsed(&self) -> bool {
        self.predicted_classes == 1.0 || self.at_chance()
    }

    /// Whether the training loss is at chance level, `ln C` for `C` classes (false where the number
    /// of classes is unknown).
    pub fn at_chance(&self) -> bool {
        self.classes >= 2.0 && self.train_loss >= CHANCE_LOSS_FRACTION * self.classes.ln()
    }
}

pub(crate) fn file_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::data(
        path.display(),
        None,
        e.to_string(),
        "delete the file to let the runner write it afresh",
    )
}

/// A column of the results table: its name, how a row gives its value and how a read value is set.
struct NumberColumn {
    name: &'static str,
    integer: bool,
    /// A column added later: a table without it reads as NaN.
    optional: bool,
    get: fn(&EpochRow) -> f64,
    set: fn(&mut EpochRow, f64),
}

/// A [`NumberColumn`] for the field `$field` of type `$ty` (integers are written without decimals).
macro_rules! number_column {
    ($field:ident, f64) => {
        NumberColumn {
            name: stringify!($field),
            integer: false,
            optional: false,
            get: |r| r.$field,
            set: |r, v| r.$field = v,
        }
    };
    ($field:ident, $ty:ty) => {
        NumberColumn {
            name: stringify!($field),
            integer: true,
            optional: false,
            get: |r| r.$field as f64,
            set: |r, v| r.$field = v as $ty,
        }
    };
}

/// The numeric columns, in file order (after `experiment` and `method`).
const NUMBERS: [NumberColumn; 14] = [
    number_column!(eps, f64),
    number_column!(seed, u64),
    number_column!(epoch, usize),
    number_column!(train_loss, f64),
    number_column!(dev_accuracy, f64),
    number_column!(test_accuracy, f64),
    number_column!(fgsm_accuracy, f64),
    number_column!(pgd_accuracy, f64),
    number_column!(passes_forward, usize),
    number_column!(passes_backward, usize),
    number_column!(seconds, f64),
    NumberColumn {
        optional: true,
        ..number_column!(predicted_classes, f64)
    },
    NumberColumn {
        optional: true,
        ..number_column!(pgd_l2_accuracy, f64)
    },
    NumberColumn {
        optional: true,
        ..number_column!(classes, f64)
    },
];

/// Writes `rows` as CSV to `path` (written to a temporary name, then renamed).
pub fn write_rows(path: &Path, rows: &[EpochRow]) -> Result<()> {
    let mut columns = vec![
        Column::new(
            "experiment".into(),
            rows.iter()
                .map(|r| r.experiment.as_str())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "method".into(),
            rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
        ),
    ];
    for c in &NUMBERS {
        let values = rows.iter().map(c.get);
        columns.push(if c.integer {
            Column::new(c.name.into(), values.map(|v| v as u64).collect::<Vec<_>>())
        } else {
            Column::new(c.name.into(), values.collect::<Vec<_>>())
        });
    }
    let mut frame = DataFrame::new(rows.len(), columns).map_err(|e| file_error(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_error(path, e))?;
    }
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial).map_err(|e| file_error(path, e))?;
    CsvWriter::new(&mut file)
        .finish(&mut frame)
        .map_err(|e| file_error(path, e))?;
    std::fs::rename(&partial, path).map_err(|e| file_error(path, e))?;
    Ok(())
}

/// Reads a results CSV written by [`write_rows`]; a cell that is not a number is an error naming its
/// line.
pub fn read_rows(path: &Path) -> Result<Vec<EpochRow>> {
    let frame = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| file_error(path, e))?;
    let column = |name: &str| -> Result<Vec<String>> {
        let c = frame.column(name).map_err(|e| file_error(path, e))?;
        let c = c.str().map_err(|e| file_error(path, e))?;
        Ok(c.iter().map(|v| v.unwrap_or("").to_string()).collect())
    };
    let (experiment, method) = (column("experiment")?, column("method")?);
    let mut rows: Vec<EpochRow> = experiment
        .into_iter()
        .zip(method)
        .map(|(experiment, method)| EpochRow {
            experiment,
            method,
            ..EpochRow::default()
        })
        .collect();
    for c in &NUMBERS {
        if c.optional && frame.column(c.name).is_err() {
            rows.iter_mut().for_each(|r| (c.set)(r, f64::NAN));
            continue;
        }
        for (i, v) in column(c.name)?.iter().enumerate() {
            let value = v.parse::<f64>().map_err(|_| {
                Error::data(
                    path.display(),
                    Some(i + 2),
                    format!("column {}: {v:?} is not a number", c.name),
                    "delete the file to let the runner write it afresh",
                )
            })?;
            (c.set)(&mut rows[i], value);
        }
    }
    Ok(rows)
}
