//! Writing the reply to stdout: flushed per piece, and a closed pipe (`| head`) ends the command
//! quietly instead of failing.

use std::io::{self, Write};

/// Stdout for streamed text.
pub struct Stdout {
    out: io::Stdout,
    closed: bool,
    ends_with_newline: bool,
    wrote_any: bool,
}

impl Stdout {
    /// The process's stdout.
    pub fn new() -> Self {
        Self { out: io::stdout(), closed: false, ends_with_newline: false, wrote_any: false }
    }

    /// Writes and flushes `text`. Returns `Ok(false)` once the reader has gone away.
    pub fn write(&mut self, text: &str) -> io::Result<bool> {
        if self.closed {
            return Ok(false);
        }
        if text.is_empty() {
            return Ok(true);
        }
        let mut lock = self.out.lock();
        match lock.write_all(text.as_bytes()).and_then(|_| lock.flush()) {
            Ok(()) => {
                self.wrote_any = true;
                self.ends_with_newline = text.ends_with('\n');
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Ends the output with a newline unless it already ends with one.
    pub fn finish_line(&mut self) -> io::Result<()> {
        if self.wrote_any && !self.ends_with_newline {
            self.write("\n")?;
        }
        Ok(())
    }
}
