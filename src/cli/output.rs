//! Printing results: stdout may be a pipe that closes early.

/// Writes to stdout; a closed pipe (`| head`) ends the process quietly
/// instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        if writeln!(o, $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// [`outln!`] without the newline.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        if write!(o, $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}
