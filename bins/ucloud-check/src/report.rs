//! What the check found: problems (the exit status), warnings, and what is fine,
//! in the order found, so the first line is the first error.

#[derive(Default)]
pub struct Report {
    lines: Vec<String>,
    problems: usize,
    fine: Vec<String>,
}

impl Report {
    /// A problem the dispatcher (or the program named) would refuse to work with.
    /// `line` 0: the file as a whole.
    /// The same problem met twice (a directory many files are below) is one.
    pub fn problem(&mut self, path: &str, line: usize, what: &str) {
        let line = located(path, line, what);
        if !self.lines.contains(&line) {
            self.problems += 1;
            self.lines.push(line);
        }
    }

    /// Works, but looks like a mistake.
    pub fn warning(&mut self, path: &str, what: &str) {
        self.lines
            .push(located(path, 0, &format!("warning: {what}")));
    }

    /// Something checked and found right, for the summary.
    pub fn fine(&mut self, what: impl Into<String>) {
        self.fine.push(what.into());
    }

    pub fn clean(&self) -> bool {
        self.problems == 0
    }

    pub fn text(&self) -> String {
        let mut out: String = self.lines.iter().map(|l| format!("{l}\n")).collect();
        if !self.fine.is_empty() {
            out.push_str(&format!("ok: {}\n", self.fine.join(", ")));
        }
        match self.problems {
            0 => out.push_str("ucloud-check: no problems found\n"),
            1 => out.push_str("ucloud-check: 1 problem found\n"),
            n => out.push_str(&format!("ucloud-check: {n} problems found\n")),
        }
        out
    }
}

fn located(path: &str, line: usize, what: &str) -> String {
    if line == 0 {
        format!("{path}: {what}")
    } else {
        format!("{path}:{line}: {what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_come_first_with_their_line_and_decide_the_status() {
        let mut r = Report::default();
        r.fine("site.conf");
        assert!(r.clean());
        r.problem("/etc/x", 4, "unknown key \"a\"");
        r.warning("/etc/y", "odd");
        r.problem("/etc/z", 0, "missing");
        r.problem("/etc/z", 0, "missing");
        assert!(!r.clean());
        assert_eq!(
            r.text(),
            "/etc/x:4: unknown key \"a\"\n/etc/y: warning: odd\n/etc/z: missing\n\
             ok: site.conf\nucloud-check: 2 problems found\n"
        );
    }
}
