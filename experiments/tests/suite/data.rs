//! The experiments' data loaders: the shipped files load with the documented counts, malformed rows
//! are errors naming file and line, CLUE JSONL reads, and splits are seeded.

use advtrain::Error;
use advtrain_experiments::data::{
    Examples, clue_jsonl, idx_images, labelled_csv, labelled_tsv, mnist_csv, rotten_tomatoes,
    split, thucnews,
};
use std::path::{Path, PathBuf};

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("advtrain-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn line_of(e: Error) -> (Option<usize>, String) {
    let text = e.to_string();
    match e {
        Error::Data { line, .. } => (line, text),
        other => panic!("expected a data error, got {other}"),
    }
}

#[test]
fn thucnews_has_ten_classes_of_about_ten_thousand() {
    let data = thucnews(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/thucnews_10w.tsv.xz"
    )))
    .unwrap();
    assert_eq!(data.len(), 100_000);
    assert_eq!(data.classes.len(), 10);
    assert_eq!(data.classes[0], "education");
    let mut counts = [0usize; 10];
    for &y in &data.labels {
        counts[y as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| (9_500..10_500).contains(&c)),
        "{counts:?}"
    );
    assert_eq!(data.texts[0], "顺义北京苏活88平米起精装房在售均价16000");
    assert_eq!(data.classes[data.labels[0] as usize], "realty");
}

#[test]
fn rotten_tomatoes_drops_plot_rows() {
    let data = rotten_tomatoes(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/rotten_tomatoes_corpus_full.csv.bz2"
    )))
    .unwrap();
    assert_eq!(data.classes, ["fresh", "rotten"]);
    let fresh = data.labels.iter().filter(|&&y| y == 0).count();
    assert_eq!((fresh, data.len() - fresh), (7_403, 5_405));
}

#[test]
fn mnist_has_five_hundred_per_digit() {
    let data = mnist_csv(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/mnist_5k.csv.gz"
    )))
    .unwrap();
    assert_eq!(data.len(), 5_000);
    assert_eq!(data.pixels.len(), 5_000 * 784);
    assert!(data.pixels.iter().all(|p| (0.0..=1.0).contains(p)));
    assert!(data.pixels.contains(&1.0));
    for digit in 0..10 {
        assert_eq!(data.labels.iter().filter(|&&y| y == digit).count(), 500);
    }
}

#[test]
fn a_missing_file_names_the_path() {
    let e = thucnews(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/no-such-file.tsv"
    )))
    .unwrap_err();
    let (line, text) = line_of(e);
    assert_eq!(line, None);
    assert!(
        text.contains("no-such-file.tsv") && text.contains("cannot open"),
        "{text}"
    );
}

#[test]
fn a_ragged_tsv_row_is_reported_at_its_line() {
    let path = temp_file("ragged.tsv", "sports\tA\nsports\tB\textra\nfinance\tC\n");
    let (line, text) = line_of(thucnews(&path).unwrap_err());
    assert_eq!(line, Some(2), "{text}");
    assert!(text.contains("expected 2 fields, found 3"), "{text}");
    // The fix says how the file was read: comma-separated rows in a .txt are not a CSV.
    let path = temp_file("rows.txt", "sports,A\nfinance,B\n");
    let (line, text) = line_of(labelled_tsv(&path, None).unwrap_err());
    assert_eq!(line, Some(1), "{text}");
    assert!(
        text.contains("read as TSV") && text.contains(".csv"),
        "{text}"
    );
}

#[test]
fn blank_lines_and_empty_texts_are_reported_at_their_lines() {
    let path = temp_file("blank.tsv", "sports\tA\n\nfinance\tB\n");
    let (line, text) = line_of(thucnews(&path).unwrap_err());
    assert_eq!(line, Some(2), "{text}");
    let path = temp_file("empty.tsv", "sports\tA\nsports\tB\nfinance\t \n");
    let (line, text) = line_of(thucnews(&path).unwrap_err());
    assert_eq!(line, Some(3), "{text}");
    assert!(text.contains("empty text"), "{text}");
}

#[test]
fn quoted_newlines_keep_csv_line_numbers_right() {
    let path = temp_file(
        "rt.csv",
        "category,text,movie_name,has_plot_and_reviews\n\
         fresh,\"two\nlines, and a comma\",m,False\n\
         rotten,fine,m,False\n\
         stale,bad label,m,False\n",
    );
    let (line, text) = line_of(rotten_tomatoes(&path).unwrap_err());
    assert_eq!(line, Some(5), "{text}");
    assert!(text.contains("unknown label \"stale\""), "{text}");
}

#[test]
fn a_bad_pixel_is_reported_at_its_line() {
    let good: Vec<String> = (0..784).map(|_| "0".to_string()).collect();
    let mut bad = good.clone();
    bad[10] = "300".into();
    let contents = format!("{},3\n{},7\n", good.join(","), bad.join(","));
    let (line, text) = line_of(mnist_csv(&temp_file("mnist.csv", &contents)).unwrap_err());
    assert_eq!(line, Some(2), "{text}");
    assert!(text.contains("\"300\""), "{text}");
}

#[test]
fn clue_jsonl_reads_tnews_and_iflytek_lines() {
    let train = temp_file(
        "train.json",
        "{\"label\": \"102\", \"label_desc\": \"news_entertainment\", \"sentence\": \"电影上映\", \"keywords\": \"\"}\n\
         {\"label\": \"103\", \"label_desc\": \"news_sports\", \"sentence\": \"比赛结束\", \"keywords\": \"\"}\n\
         \n\
         {\"label\": 110, \"label_des\": \"社区超市\", \"sentence\": \"买菜\"}\n",
    );
    let data = clue_jsonl(&train, None).unwrap();
    assert_eq!(data.classes, ["102", "103", "110"]);
    assert_eq!(data.labels, [0, 1, 2]);
    assert_eq!(data.texts[1], "比赛结束");
    let dev = temp_file("dev.json", "{\"label\": \"103\", \"sentence\": \"进球\"}\n");
    assert_eq!(clue_jsonl(&dev, Some(&data.classes)).unwrap().labels, [1]);
    let unknown = temp_file("dev2.json", "{\"label\": \"999\", \"sentence\": \"x\"}\n");
    let (line, _) = line_of(clue_jsonl(&unknown, Some(&data.classes)).unwrap_err());
    assert_eq!(line, Some(1));
}

#[test]
fn clue_jsonl_errors_name_the_line() {
    let path = temp_file(
        "broken.json",
        "{\"label\": \"1\", \"sentence\": \"a\"}\n{\"label\": \"1\", \"sentence\": \n",
    );
    let (line, text) = line_of(clue_jsonl(&path, None).unwrap_err());
    assert_eq!(line, Some(2));
    assert!(text.contains("not JSON"), "{text}");
    let path = temp_file("nolabel.json", "{\"sentence\": \"a\"}\n");
    let (line, text) = line_of(clue_jsonl(&path, None).unwrap_err());
    assert_eq!(line, Some(1));
    assert!(text.contains("no \"label\""), "{text}");
}

#[test]
fn splits_are_seeded_disjoint_and_complete() {
    let data = thucnews(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/thucnews_10w.tsv.xz"
    )))
    .unwrap();
    let a = split(&data, 0.1, 0.1, 7).unwrap();
    let b = split(&data, 0.1, 0.1, 7).unwrap();
    let c = split(&data, 0.1, 0.1, 8).unwrap();
    assert_eq!(
        (a.train.len(), a.dev.len(), a.test.len()),
        (80_000, 10_000, 10_000)
    );
    assert_eq!(a.test.texts, b.test.texts);
    assert_ne!(a.test.texts, c.test.texts);
    let mut all: Vec<&String> = a
        .train
        .texts
        .iter()
        .chain(&a.dev.texts)
        .chain(&a.test.texts)
        .collect();
    all.sort();
    let mut original: Vec<&String> = data.texts.iter().collect();
    original.sort();
    assert_eq!(all, original);
    assert!(split(&data, 0.6, 0.5, 1).is_err());
    assert!(split(&data, -0.1, 0.1, 1).is_err());
}

/// An IDX file of unsigned bytes with the given sizes, gzipped when the name ends in `.gz`.
pub(crate) fn idx_file(name: &str, sizes: &[u32], values: &[u8]) -> PathBuf {
    let mut bytes = vec![0u8, 0, 0x08, sizes.len() as u8];
    for size in sizes {
        bytes.extend_from_slice(&size.to_be_bytes());
    }
    bytes.extend_from_slice(values);
    let dir = std::env::temp_dir().join(format!("advtrain-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    if name.ends_with(".gz") {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
    } else {
        std::fs::write(&path, bytes).unwrap();
    }
    path
}

#[test]
fn idx_files_load_as_the_shipped_csv_and_malformed_ones_name_the_file() {
    // The first 20 digits of the shipped CSV, written as MNIST's gzipped IDX pair, load back equal.
    let csv = mnist_csv(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/mnist_5k.csv.gz"
    )))
    .unwrap();
    let n = 20;
    let pixels: Vec<u8> = csv.pixels[..n * 784]
        .iter()
        .map(|p| (p * 255.0).round() as u8)
        .collect();
    let labels: Vec<u8> = csv.labels[..n].iter().map(|&y| y as u8).collect();
    let images_path = idx_file("images-idx3-ubyte.gz", &[n as u32, 28, 28], &pixels);
    let labels_path = idx_file("labels-idx1-ubyte", &[n as u32], &labels);
    let idx = idx_images(&images_path, &labels_path).unwrap();
    assert_eq!((idx.len(), idx.height, idx.width), (n, 28, 28));
    assert_eq!(idx.pixels, csv.pixels[..n * 784]);
    assert_eq!(idx.labels, csv.labels[..n]);
    assert_eq!(
        idx.classes,
        1 + *csv.labels[..n].iter().max().unwrap() as usize
    );
    // Malformed: each error names the file and says what is wrong.
    let fails = |images: &Path, labels: &Path, says: &str| {
        let e = idx_images(images, labels).unwrap_err();
        assert!(matches!(e, Error::Data { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains(says) && text.contains("fix: "), "{text}");
    };
    let not_idx = temp_file("not-idx", "label,text\n");
    fails(&not_idx, &labels_path, "not an IDX file");
    let truncated = idx_file("short-idx3-ubyte", &[n as u32, 28, 28], &pixels[..100]);
    fails(&truncated, &labels_path, "promises 15680 values");
    let two_dims = idx_file("flat-idx2-ubyte", &[n as u32, 784], &pixels);
    fails(&two_dims, &labels_path, "2-dimensional");
    let fewer = idx_file("fewer-idx1-ubyte", &[3], &labels[..3]);
    fails(&images_path, &fewer, "holds 3 labels for the 20 images");
    fails(&images_path, Path::new("no-such-labels"), "cannot open");
}

#[test]
fn your_own_labelled_texts_load_from_tsv_and_csv_with_errors_at_their_line() {
    // TSV: classes from the training file; the dev file is read against them.
    let train = temp_file(
        "own-train.tsv",
        "sports\tA match\nfinance\tA bank\nsports\tA race\n",
    );
    let train = labelled_tsv(&train, None).unwrap();
    assert_eq!(train.classes, ["finance", "sports"]);
    assert_eq!(train.labels, [1, 0, 1]);
    assert_eq!(train.texts[1], "A bank");
    let dev = temp_file("own-dev.tsv", "finance\tRates\nweather\tRain\n");
    let e = labelled_tsv(&dev, Some(&train.classes))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":2:") && e.contains("unknown label \"weather\""),
        "{e}"
    );
    let ragged = temp_file("own-ragged.tsv", "sports\tA match\nfinance\n");
    let e = labelled_tsv(&ragged, None).unwrap_err().to_string();
    assert!(e.contains(":2:") && e.contains("expected 2 fields"), "{e}");
    let empty = temp_file("own-empty.tsv", "sports\tA match\nfinance\t  \n");
    let e = labelled_tsv(&empty, None).unwrap_err().to_string();
    assert!(e.contains(":2:") && e.contains("empty text"), "{e}");
    // CSV with a header: the columns are named; quoted commas stay in the text.
    let csv = temp_file(
        "own.csv",
        "id,review,stars\n1,\"Good, really\",pos\n2,Dull,neg\n",
    );
    let data = labelled_csv(&csv, "stars", "review", None).unwrap();
    assert_eq!(data.classes, ["neg", "pos"]);
    assert_eq!(data.texts, ["Good, really", "Dull"]);
    assert_eq!(data.labels, [1, 0]);
    let e = labelled_csv(&csv, "label", "review", None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":1:") && e.contains("no column named \"label\"") && e.contains("stars"),
        "{e}"
    );
    let ragged = temp_file("own-ragged.csv", "id,review,stars\n1,Fine,pos\n2,Dull\n");
    let e = labelled_csv(&ragged, "stars", "review", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains(":3:") && e.contains("expected 3 fields"), "{e}");
}

#[test]
fn a_set_too_small_for_a_dev_and_a_test_example_is_refused() {
    let four = labelled_tsv(
        &temp_file("four.tsv", "a\tone\nb\ttwo\na\tthree\nb\tfour\n"),
        None,
    )
    .unwrap();
    let Err(Error::InvalidArgument { name, fix, .. }) = split(&four, 0.1, 0.2, 0) else {
        panic!("four examples were split into an empty dev set");
    };
    assert_eq!(name, "data");
    // Five give one dev (0.5 rounds up), one test and three training examples.
    assert!(fix.contains("at least 5 examples"), "{fix}");
}

#[test]
fn one_label_empty_labels_label_columns_of_texts_and_other_encodings_are_refused() {
    let (line, text) =
        line_of(labelled_tsv(&temp_file("one.tsv", "spam\tbuy\nspam\tnow\n"), None).unwrap_err());
    assert!(
        line.is_none() && text.contains("\"spam\"") && text.contains("two labels"),
        "{text}"
    );
    let (line, text) = line_of(
        labelled_tsv(
            &temp_file("empty-label.tsv", "a\tone\n\ttwo\nb\tthree\n"),
            None,
        )
        .unwrap_err(),
    );
    assert_eq!(line, Some(2), "{text}");
    // The columns swapped: every text a label of its own.
    let swapped: String = (0..30)
        .map(|i| format!("headline number {i}\tsport\n"))
        .collect();
    let (_, text) = line_of(labelled_tsv(&temp_file("swapped.tsv", &swapped), None).unwrap_err());
    assert!(text.contains("30 distinct labels in 30 rows"), "{text}");
    // A small cut of a many-class set repeats some labels: 40 rows, 30 labels, 10 of them twice.
    let cut: String = (0..40)
        .map(|i| format!("class{}\theadline {i}\n", i % 30))
        .collect();
    assert_eq!(
        labelled_tsv(&temp_file("cut.tsv", &cut), None)
            .unwrap()
            .classes
            .len(),
        30
    );
    // GBK bytes on line 2.
    let path = temp_file("gbk.tsv", "");
    std::fs::write(&path, b"a\tone\nb\t\xd6\xd0\xce\xc4\n").unwrap();
    let (line, text) = line_of(labelled_tsv(&path, None).unwrap_err());
    assert!(line == Some(2) && text.contains("UTF-8"), "{text}");
}
