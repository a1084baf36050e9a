//! Sorts fuzz inputs by what the harness makes of them, to pick a small
//! corpus to commit: one line per input, `class<TAB>size<TAB>file`, where
//! the class is the decoded message kind or the error, with numbers and
//! quoted text blanked out.
//!
//! Usage: `cargo run --example triage -- frame|cert_identity FILE...`

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

fn blank(s: &str) -> String {
    let mut out = String::new();
    let mut quote = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                out.push(c);
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                quote = Some(c);
                out.push(c);
            }
            None if c.is_ascii_digit() => {
                if !out.ends_with('N') {
                    out.push('N');
                }
            }
            None => out.push(c),
        }
    }
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .expect("usage: triage frame|cert_identity FILE...");
    for file in args {
        let data = std::fs::read(&file).unwrap();
        let class = match target.as_str() {
            "frame" => {
                let out = harness::check_frame(&data);
                let direct = match &out.direct {
                    Ok(m) => format!("ok:{}", m.kind()),
                    Err(e) => format!("err:{}", blank(&e.to_string())),
                };
                let frames: Vec<&str> = out.frames.iter().map(|m| m.kind()).collect();
                format!("{direct} | stream {frames:?} error={}", out.stream_error)
            }
            "cert_identity" => match harness::check_cert(&data) {
                Ok(id) => format!("ok:{}", id.role),
                Err(e) => format!("err:{}", blank(&e.to_string())),
            },
            other => panic!("unknown target {other}"),
        };
        println!("{class}\t{}\t{file}", data.len());
    }
}
