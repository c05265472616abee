//! Extracts the heap profile the kernel's `heapprofile` command prints over serial (kernel/src/
//! heapprofile.rs: `HEAPPROFILE BEGIN <n>`, lines `HEAPPROFILE <hex>`, `HEAPPROFILE END <n> <sum>`) back
//! into the pprof protobuf bytes.

/// Collects a profile from serial lines; feed every line to [`Collector::line`].
#[derive(Debug, Default)]
pub struct Collector {
    started: Option<usize>,
    data: Vec<u8>,
    done: Option<Result<Vec<u8>, String>>,
}

impl Collector {
    /// Takes one serial line (newline and `\r` allowed); `true` if it was part of a profile (the runner
    /// does not echo the hex lines).
    pub fn line(&mut self, line: &str) -> bool {
        let line = line.trim_end();
        let Some(rest) = line.strip_prefix("HEAPPROFILE ") else {
            return false;
        };
        if let Some(n) = rest.strip_prefix("BEGIN ") {
            self.data.clear();
            self.started = n.trim().parse().ok();
            if self.started.is_none() {
                self.done = Some(Err(format!("bad profile header `{line}`")));
            }
            return false;
        }
        if let Some(tail) = rest.strip_prefix("END ") {
            self.done = Some(self.end(tail));
            self.started = None;
            return false;
        }
        if self.started.is_some() {
            match decode_hex(rest) {
                Some(bytes) => self.data.extend(bytes),
                None => {
                    self.done = Some(Err(format!("bad profile line `{line}`")));
                    self.started = None;
                }
            }
        }
        true
    }

    fn end(&mut self, tail: &str) -> Result<Vec<u8>, String> {
        let Some(expected) = self.started else {
            return Err("profile end without a beginning".into());
        };
        let mut words = tail.split_whitespace();
        let n: Option<usize> = words.next().and_then(|w| w.parse().ok());
        let sum: Option<u32> = words.next().and_then(|w| w.parse().ok());
        let got_sum = self
            .data
            .iter()
            .fold(0u32, |s, &b| s.wrapping_add(b as u32));
        if n != Some(expected) || self.data.len() != expected {
            return Err(format!(
                "profile of {} bytes announced as {expected}, ended as {n:?}",
                self.data.len()
            ));
        }
        if sum != Some(got_sum) {
            return Err(format!(
                "profile checksum {got_sum} differs from the kernel's {sum:?} (serial corruption?)"
            ));
        }
        Ok(std::mem::take(&mut self.data))
    }

    /// The profile, if one was printed: its bytes, or what was wrong with it (also a profile cut short).
    pub fn finish(self) -> Option<Result<Vec<u8>, String>> {
        match (self.done, self.started) {
            (Some(done), _) => Some(done),
            (None, Some(_)) => Some(Err("the profile was cut short (no END line)".into())),
            (None, None) => None,
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Option<Result<Vec<u8>, String>> {
        let mut c = Collector::default();
        for l in lines {
            c.line(l);
        }
        c.finish()
    }

    #[test]
    fn extracts_the_bytes_and_checks_them() {
        let ok = feed(&[
            "boot\n",
            "HEAPPROFILE BEGIN 3\r\n",
            "HEAPPROFILE 0a0b\n",
            "HEAPPROFILE ff\n",
            "HEAPPROFILE END 3 276\n",
        ]);
        assert_eq!(ok, Some(Ok(vec![0x0a, 0x0b, 0xff])));
        assert_eq!(feed(&["nothing here"]), None);
        let bad_sum = feed(&[
            "HEAPPROFILE BEGIN 1",
            "HEAPPROFILE 01",
            "HEAPPROFILE END 1 2",
        ]);
        assert!(bad_sum.unwrap().unwrap_err().contains("checksum"));
        let short = feed(&["HEAPPROFILE BEGIN 2", "HEAPPROFILE 01"]);
        assert!(short.unwrap().unwrap_err().contains("cut short"));
        let bad_hex = feed(&[
            "HEAPPROFILE BEGIN 1",
            "HEAPPROFILE 0g",
            "HEAPPROFILE END 1 0",
        ]);
        assert!(bad_hex.unwrap().is_err());
    }
}
