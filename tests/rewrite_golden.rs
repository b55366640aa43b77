//! Golden tests for the rewrite core: every `fixtures/rewrite/NAME.eml` is rewritten with LF and
//! with CRLF line ends and compared with `NAME.expected.eml` (the forwarded bytes) and/or
//! `NAME.skip` (the expected skip reason; without an expected file the message must be
//! forwarded unchanged). A mismatch writes the actual output to `NAME.failed` beside it.
//! `PIXELRELAY_BLESS=1 cargo test --test rewrite_golden` (re)writes the expected files: review
//! the diff before committing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::to_lf;
use mail_parser::MessageParser;
use pixelrelay::rewrite::{Decision, Envelope, Policy, Rewritten, rewrite};

const URL: &str = "http://127.0.0.1:8080/o/TESTTOKEN.gif";
/// Fewer fixtures than this means the folder was not found or lost files.
const MIN_FIXTURES: usize = 30;

fn policy() -> Policy {
    common::rewrite_policy(25 << 20)
}

fn to_crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 40);
    for &c in &to_lf(b) {
        if c == b'\n' {
            out.push(b'\r');
        }
        out.push(c);
    }
    out
}

fn run(input: &[u8]) -> Rewritten {
    let rcpts = vec!["bob@example.net".to_string()];
    rewrite(
        &Envelope {
            sender: "news@example.com",
            recipients: &rcpts,
        },
        input,
        URL,
        &policy(),
    )
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rewrite");
    let mut list: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".eml") && !name.ends_with(".expected.eml")
        })
        .collect();
    list.sort();
    list
}

fn sibling(eml: &Path, ext: &str) -> PathBuf {
    let stem = eml.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    eml.with_file_name(format!("{stem}.{ext}"))
}

#[test]
fn golden_fixtures() {
    let bless = std::env::var_os("PIXELRELAY_BLESS").is_some();
    let mut ran = 0;
    let mut failures = Vec::new();
    for eml in fixtures() {
        let name = eml
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_string();
        let original = fs::read(&eml).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (expected_path, skip_path) = (sibling(&eml, "expected.eml"), sibling(&eml, "skip"));
        if bless {
            let r = run(&original);
            match &r.message {
                Some(out) => fs::write(&expected_path, out).unwrap_or_else(|e| panic!("{e}")),
                None => {
                    let _ = fs::remove_file(&expected_path);
                }
            }
            match r.decision {
                Decision::Skipped(reason) => {
                    fs::write(&skip_path, format!("{}\n", reason.as_str()))
                }
                Decision::Tracked => fs::remove_file(&skip_path).or(Ok(())),
            }
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let expected = fs::read(&expected_path).ok();
        let skip = fs::read_to_string(&skip_path)
            .ok()
            .map(|s| s.trim().to_string());
        assert!(
            expected.is_some() || skip.is_some(),
            "{name}: neither .expected.eml nor .skip"
        );
        for (variant, convert) in [("lf", to_lf as fn(&[u8]) -> Vec<u8>), ("crlf", to_crlf)] {
            ran += 1;
            let input = convert(&original);
            let r = run(&input);
            let what = format!("{name} ({variant})");
            let decision = match r.decision {
                Decision::Tracked => "tracked".to_string(),
                Decision::Skipped(reason) => reason.as_str().to_string(),
            };
            let want_decision = skip.clone().unwrap_or_else(|| "tracked".to_string());
            if decision != want_decision {
                failures.push(format!(
                    "{what}: decision {decision}, expected {want_decision}"
                ));
            }
            let got = r.message.clone();
            let want = expected.as_deref().map(convert);
            if got != want {
                let actual = got.clone().unwrap_or_else(|| input.clone());
                let _ = fs::write(sibling(&eml, "failed"), &actual);
                failures.push(format!(
                    "{what}: output differs from {} (see .failed)",
                    expected_path.display()
                ));
            }
            // Header facts are filled for tracked and skipped messages alike.
            assert_eq!(
                r.info.message_id,
                Some(format!("<{name}@fixtures.pixelrelay.test>")),
                "{what}"
            );
            let subject = r.info.subject.clone().unwrap_or_default();
            assert!(
                subject.contains("café") && subject.contains(&name),
                "{what}: subject {subject:?}"
            );
            if let Some(out) = &got {
                assert!(
                    MessageParser::new().parse(out).is_some(),
                    "{what}: output does not parse"
                );
                // Never lines over 998 octets that the input did not already have.
                let longest =
                    |b: &[u8]| b.split(|&c| c == b'\n').map(|l| l.len()).max().unwrap_or(0);
                assert!(
                    longest(out) <= 999 || longest(out) <= longest(&input),
                    "{what}: line too long"
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches:\n{}",
        failures.join("\n")
    );
    assert!(
        ran >= 2 * MIN_FIXTURES,
        "only {ran} golden runs: fixtures/rewrite missing files?"
    );
    println!("{ran} golden runs");
}
