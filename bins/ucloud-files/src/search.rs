//! `files.streamingSearch`: the files below a folder of the caller's drive whose
//! name holds the query, case-insensitively (what UCloud's own module matches:
//! im2 slurm/files.go `search`, a lower-cased substring of the name), sent as they
//! are found. The request is the core's `FilesProviderStreamingSearchRequest`
//! (orchestrators/files.go) with the gateway's `budget` added; the answer is the
//! WebSocket stream of ucloud-im-protocol(7): the two head lines, then one
//! `FilesProviderStreamingSearchResult` per line, `{"type":"result","batch":[...]}`
//! pages and a last `{"type":"end_of_results","batch":[]}`.
//!
//! The walk runs as the user and opens every directory with `openat` and
//! `O_NOFOLLOW` relative to its parent, so a link is reported as a link and never
//! entered: it cannot lead out of the drive, nor into a loop. A directory the user
//! cannot read, or one that vanished or was swapped for a link meanwhile, is left
//! out and the walk goes on. It ends at the end of the tree, at the time or result
//! budget, when the gateway closes stdin (the client went away) or when stdout
//! breaks (EPIPE: the gateway is gone).

use crate::browse::provider_file_at;
use crate::error::Error;
use crate::fsops::TRANSIENT;
use crate::path::{MAX_NAME, MAX_PATH};
use crate::resolve::{text, Ctx};
use crate::tree::{self, Kind};
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode};
use serde_json::Value;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};
use ucloud_wire::answer::{MAGIC, WEBSOCKET_HEAD};

/// UCloud's core refuses a longer query (util.ValidateString's limit).
pub const MAX_QUERY: usize = 1024;
/// Budgets when the request carries none (the gateway always sends them).
const DEFAULT_SECONDS: u64 = 30;
const DEFAULT_RESULTS: u64 = 100_000;
/// A page is sent when it holds this many results or this many bytes of them, or
/// when `PAGE_EVERY` passed since the last one: the first result goes out at once,
/// the rest in pages a browser can render.
const PAGE_RESULTS: usize = 250;
const PAGE_BYTES: usize = 256 << 10;
const PAGE_EVERY: Duration = Duration::from_millis(100);
/// Directories deeper than this are not entered: each level holds a descriptor
/// while its subdirectories wait, and a path this deep is past any use.
const MAX_DEPTH: usize = 256;
/// How many entries pass between two looks at stdin.
const STOP_CHECK_EVERY: u32 = 512;

/// What a name must hold. A query of ASCII alone (the common case) is compared
/// byte by byte without allocating; any other is compared lower-cased.
#[derive(Debug)]
pub enum Matcher {
    Ascii(Vec<u8>),
    Unicode(String),
}

impl Matcher {
    pub fn new(query: &str) -> Matcher {
        if query.is_ascii() {
            Matcher::Ascii(query.to_ascii_lowercase().into_bytes())
        } else {
            Matcher::Unicode(query.to_lowercase())
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Ascii(q) => {
                let n = name.as_bytes();
                q.is_empty()
                    || n.len() >= q.len() && n.windows(q.len()).any(|w| w.eq_ignore_ascii_case(q))
            }
            Matcher::Unicode(q) => name.to_lowercase().contains(q.as_str()),
        }
    }
}

/// When the walk stops early.
pub struct Budget {
    pub deadline: Instant,
    pub results: u64,
}

/// Why a walk ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every readable entry was seen.
    Done,
    TimeUp,
    ResultsUp,
    /// The caller asked to stop, or could not take a result.
    Stopped,
}

/// A directory waiting to be read: its parent (kept open while any child
/// waits), its name there, its UCloud path and its depth.
struct Pending {
    parent: Rc<OwnedFd>,
    name: String,
    shown: String,
    depth: usize,
}

/// Who takes what a walk finds.
pub trait Visit {
    /// An entry whose name matches: its UCloud path and `lstat`. `false`: stop.
    fn found(&mut self, path: &str, st: &FileStat) -> bool;
    /// Asked every `STOP_CHECK_EVERY` entries, matching or not. `false`: stop.
    fn tick(&mut self) -> bool;
}

/// Walks the tree below `root` (shown as `root_shown`) depth first, giving `visit`
/// every entry whose name matches.
pub fn walk(
    root: OwnedFd,
    root_shown: &str,
    matcher: &Matcher,
    budget: &Budget,
    visit: &mut impl Visit,
) -> Ended {
    let mut results = 0u64;
    let mut seen = 0u32;
    let mut waiting: Vec<Pending> = Vec::new();
    let mut current = Some((root, root_shown.to_string(), 0usize));
    loop {
        let (fd, shown, depth) = match current.take() {
            Some(c) => c,
            None => {
                let Some(p) = waiting.pop() else {
                    return Ended::Done;
                };
                // A directory that cannot be opened now (unreadable, gone, turned
                // into a link) is left out; O_NOFOLLOW never enters a link.
                match openat(&*p.parent, p.name.as_str(), dir_flags(), Mode::empty()) {
                    Ok(fd) => (fd, p.shown, p.depth),
                    Err(_) => continue,
                }
            }
        };
        let Ok(mut dir) = Dir::from_fd(fd) else {
            continue;
        };
        let mut subdirs: Vec<(String, String)> = Vec::new();
        // `Dir` reads through its own descriptor; children open relative to a copy.
        let Ok(here) = dir.as_fd().try_clone_to_owned() else {
            continue;
        };
        for entry in dir.iter() {
            let Ok(entry) = entry else {
                // A read error mid-directory: keep what was read, go on elsewhere.
                break;
            };
            seen = seen.wrapping_add(1);
            if seen.is_multiple_of(STOP_CHECK_EVERY) && !visit.tick() {
                return Ended::Stopped;
            }
            if Instant::now() >= budget.deadline {
                return Ended::TimeUp;
            }
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            // A name that is not UTF-8 cannot be a UCloud path (a JSON string).
            let Ok(name) = std::str::from_utf8(bytes) else {
                continue;
            };
            if name.starts_with(TRANSIENT) || name.len() > MAX_NAME {
                continue;
            }
            let path_len = shown.len() + 1 + name.len();
            if path_len > MAX_PATH {
                continue;
            }
            let mut is_dir = entry.file_type().map(|t| t == Type::Directory);
            if matcher.matches(name) {
                let st = match fstatat(&here, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(_) => continue,
                };
                is_dir = Some(Kind::of(&st) == Kind::Directory);
                let mut path = String::with_capacity(path_len);
                path.push_str(&shown);
                path.push('/');
                path.push_str(name);
                if !visit.found(&path, &st) {
                    return Ended::Stopped;
                }
                results += 1;
                if results >= budget.results {
                    return Ended::ResultsUp;
                }
            }
            // Some file systems do not say; ask them without following a link.
            let is_dir = is_dir.unwrap_or_else(|| {
                fstatat(&here, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| Kind::of(&st) == Kind::Directory)
            });
            if is_dir && depth < MAX_DEPTH {
                subdirs.push((name.to_string(), format!("{shown}/{name}")));
            }
        }
        drop(dir);
        if !subdirs.is_empty() {
            let parent = Rc::new(here);
            // Reversed, so that they are read in the order they were listed.
            for (name, shown) in subdirs.into_iter().rev() {
                waiting.push(Pending {
                    parent: Rc::clone(&parent),
                    name,
                    shown,
                    depth: depth + 1,
                });
            }
        }
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The request: the query, the folder, the budget.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub query: String,
    pub folder: String,
    pub seconds: u64,
    pub results: u64,
}

pub fn query(request: &Value) -> Result<Query, Error> {
    let bad = |m: String| Error::BadRequest(m);
    let q = text(request, "query", "the search")?;
    if q.is_empty() || q.len() > MAX_QUERY {
        return Err(bad(format!(
            "the query must hold 1 to {MAX_QUERY} bytes, not {}",
            q.len()
        )));
    }
    let folder = match request.get("currentFolder") {
        Some(Value::String(f)) => f.clone(),
        _ => {
            return Err(bad(
                "currentFolder is missing: a search runs below a folder of a drive".into(),
            ))
        }
    };
    let number = |key: &str, default: u64| -> Result<u64, Error> {
        match request.get("budget").and_then(|b| b.get(key)) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(format!("budget.{key} must be a positive number, got {v}"))),
        }
    };
    Ok(Query {
        query: q.to_string(),
        folder,
        seconds: number("seconds", DEFAULT_SECONDS)?,
        results: number("results", DEFAULT_RESULTS)?,
    })
}

/// Collects results into pages and writes each as one line.
struct Pager<W: Write> {
    out: W,
    /// The items of the page so far, comma-separated JSON.
    items: String,
    count: usize,
    last_sent: Instant,
}

impl<W: Write> Pager<W> {
    fn new(out: W) -> Pager<W> {
        Pager {
            out,
            items: String::new(),
            count: 0,
            // As if a page had just gone out long ago: the first result goes at once.
            last_sent: Instant::now() - PAGE_EVERY,
        }
    }

    /// Adds one result; `false` when the page could not be written.
    fn add(&mut self, item: &Value) -> bool {
        if self.count > 0 {
            self.items.push(',');
        }
        self.items.push_str(&item.to_string());
        self.count += 1;
        if self.count >= PAGE_RESULTS
            || self.items.len() >= PAGE_BYTES
            || self.last_sent.elapsed() >= PAGE_EVERY
        {
            return self.send();
        }
        true
    }

    /// Sends what is waiting, if anything, when it has waited `PAGE_EVERY`.
    fn tick(&mut self) -> bool {
        if self.count > 0 && self.last_sent.elapsed() >= PAGE_EVERY {
            return self.send();
        }
        true
    }

    fn send(&mut self) -> bool {
        if self.count == 0 {
            return true;
        }
        let ok = writeln!(
            self.out,
            "{{\"type\":\"result\",\"batch\":[{}]}}",
            self.items
        )
        .and_then(|()| self.out.flush())
        .is_ok();
        self.items.clear();
        self.count = 0;
        self.last_sent = Instant::now();
        ok
    }

    fn finish(mut self) -> bool {
        self.send()
            && self
                .out
                .write_all(b"{\"type\":\"end_of_results\",\"batch\":[]}\n")
                .and_then(|()| self.out.flush())
                .is_ok()
    }
}

/// Whether stdin has ended: the gateway closes it when the client went away.
fn stdin_closed() -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => {
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
                return true;
            }
            // Readable: the end (0) or bytes nobody should send, which are dropped.
            let mut buf = [0u8; 512];
            matches!(nix::unistd::read(stdin.as_fd(), &mut buf), Ok(0))
        }
        Err(Errno::EINTR) => false,
        Err(_) => true,
    }
}

/// The whole call. Failures before the stream starts (a bad request, a folder that
/// is not the caller's or cannot be opened) are answered as for any call.
pub fn run(ctx: &Ctx, request: &Value) -> Result<(), Error> {
    let started = Instant::now();
    let q = query(request)?;
    let loc = ctx.resolve(&q.folder)?;
    let comps: Vec<&str> = loc.components.iter().map(String::as_str).collect();
    let root = tree::open_below(&loc.drive.base, &comps, |i| loc.prefix(i))?;
    let budget = Budget {
        deadline: started + Duration::from_secs(q.seconds),
        results: q.results,
    };
    let matcher = Matcher::new(&q.query);
    let stdout = std::io::stdout().lock();
    let mut pager = Pager::new(stdout);
    if writeln!(pager.out, "{MAGIC}\n{WEBSOCKET_HEAD}")
        .and_then(|()| pager.out.flush())
        .is_err()
    {
        return Ok(());
    }
    let mut stream = Stream { pager, gone: false };
    let ended = walk(root, &loc.shown(), &matcher, &budget, &mut stream);
    if stream.gone || ended == Ended::Stopped {
        // The client is gone: nobody reads an end.
        return Ok(());
    }
    stream.pager.finish();
    Ok(())
}

/// The walk's results on their way out as pages, while stdin is watched.
struct Stream<W: Write> {
    pager: Pager<W>,
    /// stdout broke or stdin ended.
    gone: bool,
}

impl<W: Write> Visit for Stream<W> {
    fn found(&mut self, path: &str, st: &FileStat) -> bool {
        self.gone = !self.pager.add(&provider_file_at(path, st));
        !self.gone
    }

    fn tick(&mut self) -> bool {
        // A page held back by a stretch of the walk without matches goes out now.
        self.gone = !self.pager.tick() || stdin_closed();
        !self.gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::{Path, PathBuf};

    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(what: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "files-search-{what}-{}-{}",
            std::process::id(),
            ucloud_wire::now_ms()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    fn open(p: &Path) -> OwnedFd {
        tree::open_below(p.to_str().unwrap(), &[], |_| "/17".into()).unwrap()
    }

    fn forever() -> Budget {
        Budget {
            deadline: Instant::now() + Duration::from_secs(600),
            results: u64::MAX,
        }
    }

    /// Takes the paths found; stops after `take` of them or at the `ticks`th tick.
    #[derive(Default)]
    struct Collect {
        got: Vec<String>,
        take: Option<usize>,
        stop_ticking: bool,
    }

    impl Visit for Collect {
        fn found(&mut self, path: &str, _: &FileStat) -> bool {
            self.got.push(path.to_string());
            self.take.is_none_or(|n| self.got.len() < n)
        }

        fn tick(&mut self) -> bool {
            !self.stop_ticking
        }
    }

    fn search_with(root: &Path, q: &str, budget: &Budget, mut c: Collect) -> (Vec<String>, Ended) {
        let ended = walk(open(root), "/17", &Matcher::new(q), budget, &mut c);
        c.got.sort();
        (c.got, ended)
    }

    fn search(root: &Path, q: &str, budget: &Budget) -> (Vec<String>, Ended) {
        search_with(root, q, budget, Collect::default())
    }

    #[test]
    fn names_match_case_insensitively_as_substrings() {
        let m = Matcher::new("RePort");
        assert!(m.matches("report.txt"));
        assert!(m.matches("Annual-REPORT"));
        assert!(!m.matches("repor"));
        assert!(!m.matches(""));
        let m = Matcher::new("ÆBLE");
        assert!(m.matches("røde æbler"));
        assert!(!m.matches("aeble"));
        assert!(Matcher::new("x").matches("X"));
    }

    #[test]
    fn a_tree_is_searched_to_its_leaves() {
        let s = scratch("tree");
        let deep = s.0.join("a/b/c/d");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("Needle.txt"), "").unwrap();
        std::fs::write(s.0.join("a/needle"), "").unwrap();
        std::fs::write(s.0.join("a/hay"), "").unwrap();
        std::fs::create_dir(s.0.join("needles")).unwrap();
        std::fs::write(s.0.join(".ucloud-im-upload-1-needle"), "").unwrap();
        let (got, ended) = search(&s.0, "needle", &forever());
        assert_eq!(ended, Ended::Done);
        assert_eq!(
            got,
            ["/17/a/b/c/d/Needle.txt", "/17/a/needle", "/17/needles"]
        );
    }

    #[test]
    fn links_are_reported_never_entered() {
        let s = scratch("links");
        let outside = scratch("outside");
        std::fs::write(outside.0.join("secret-target"), "").unwrap();
        std::fs::create_dir(s.0.join("dir")).unwrap();
        // Out of the drive, a loop to itself, a loop to an ancestor.
        symlink(&outside.0, s.0.join("dir/out")).unwrap();
        symlink("loop", s.0.join("dir/loop")).unwrap();
        symlink("..", s.0.join("dir/up")).unwrap();
        let (got, ended) = search(&s.0, "target", &forever());
        assert_eq!(ended, Ended::Done);
        assert!(got.is_empty(), "{got:?}");
        let (got, _) = search(&s.0, "o", &forever());
        assert_eq!(got, ["/17/dir/loop", "/17/dir/out"]);
        let (got, _) = search(&s.0, "up", &forever());
        assert_eq!(got, ["/17/dir/up"]);
    }

    #[test]
    fn a_directory_that_cannot_be_entered_is_skipped() {
        let s = scratch("skip");
        std::fs::create_dir_all(s.0.join("a/inner")).unwrap();
        std::fs::write(s.0.join("a/inner/match-1"), "").unwrap();
        std::fs::create_dir_all(s.0.join("b")).unwrap();
        std::fs::write(s.0.join("b/match-2"), "").unwrap();
        let (got, ended) = search(&s.0, "match", &forever());
        assert_eq!(ended, Ended::Done);
        assert_eq!(got, ["/17/a/inner/match-1", "/17/b/match-2"]);
        // A directory swapped for a file, one no longer searchable in its mode: no
        // error, the rest is found. (Root, running these tests, reads a mode 000
        // directory all the same; tests/tests/files/search.rs has the user's EACCES.)
        std::fs::remove_dir_all(s.0.join("a")).unwrap();
        std::fs::write(s.0.join("a"), "").unwrap();
        std::fs::create_dir_all(s.0.join("c/d")).unwrap();
        std::fs::write(s.0.join("c/d/match-3"), "").unwrap();
        std::fs::set_permissions(s.0.join("c"), std::fs::Permissions::from_mode(0o000)).unwrap();
        let (got, ended) = search(&s.0, "match", &forever());
        std::fs::set_permissions(s.0.join("c"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(ended, Ended::Done);
        assert!(got.contains(&"/17/b/match-2".to_string()), "{got:?}");
        assert!(!got.iter().any(|p| p.starts_with("/17/a/")), "{got:?}");
    }

    #[test]
    fn names_with_newlines_stay_one_json_line() {
        let s = scratch("newline");
        std::fs::write(s.0.join("two\nlines-x"), "").unwrap();
        std::fs::write(s.0.join("quote\"-x"), "").unwrap();
        let mut out = Vec::new();
        let mut stream = Stream {
            pager: Pager::new(&mut out),
            gone: false,
        };
        let ended = walk(
            open(&s.0),
            "/17",
            &Matcher::new("-X"),
            &forever(),
            &mut stream,
        );
        assert_eq!(ended, Ended::Done);
        assert!(stream.pager.finish());
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let ids: Vec<&str> = lines
            .iter()
            .filter(|l| l["type"] == "result")
            .flat_map(|l| l["batch"].as_array().unwrap())
            .map(|f| f["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 2, "{text}");
        assert!(ids.contains(&"/17/two\nlines-x"), "{text}");
        assert_eq!(
            lines.last().unwrap(),
            &json!({"type": "end_of_results", "batch": []})
        );
    }

    #[test]
    fn budgets_and_stops_end_the_walk() {
        let s = scratch("budget");
        for i in 0..2000 {
            std::fs::write(s.0.join(format!("f{i}")), "").unwrap();
        }
        let few = Budget {
            deadline: Instant::now() + Duration::from_secs(600),
            results: 7,
        };
        let (got, ended) = search(&s.0, "f", &few);
        assert_eq!((got.len(), ended), (7, Ended::ResultsUp));
        let past = Budget {
            deadline: Instant::now(),
            results: u64::MAX,
        };
        let (got, ended) = search(&s.0, "f", &past);
        assert_eq!((got.len(), ended), (0, Ended::TimeUp));
        let ticking = Collect {
            stop_ticking: true,
            ..Collect::default()
        };
        let (got, ended) = search_with(&s.0, "f", &forever(), ticking);
        assert_eq!(ended, Ended::Stopped);
        assert!(got.len() < 2000, "stopped at the first tick");
        let three = Collect {
            take: Some(3),
            ..Collect::default()
        };
        let (got, ended) = search_with(&s.0, "f", &forever(), three);
        assert_eq!((got.len(), ended), (3, Ended::Stopped));
    }

    #[test]
    fn pages_are_bounded_and_the_first_result_goes_at_once() {
        let mut out = Vec::new();
        let mut pager = Pager::new(&mut out);
        let item = json!({"id": "/17/x"});
        assert!(pager.add(&item));
        assert_eq!(pager.count, 0, "the first result waits for nothing");
        for _ in 0..PAGE_RESULTS * 2 {
            assert!(pager.add(&item));
        }
        assert!(pager.finish());
        let text = String::from_utf8(out).unwrap();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert!(v["batch"].as_array().unwrap().len() <= PAGE_RESULTS);
        }
        assert!(text.lines().count() >= 3, "{text}");
    }

    #[test]
    fn bad_requests_are_refused() {
        let good = json!({"query": "x", "currentFolder": "/17/a",
            "budget": {"seconds": 5, "results": 9}});
        assert_eq!(
            query(&good).unwrap(),
            Query {
                query: "x".into(),
                folder: "/17/a".into(),
                seconds: 5,
                results: 9
            }
        );
        let plain = query(&json!({"query": "x", "currentFolder": "/17"})).unwrap();
        assert_eq!(
            (plain.seconds, plain.results),
            (DEFAULT_SECONDS, DEFAULT_RESULTS)
        );
        for bad in [
            json!({"currentFolder": "/17"}),
            json!({"query": "", "currentFolder": "/17"}),
            json!({"query": "x".repeat(MAX_QUERY + 1), "currentFolder": "/17"}),
            json!({"query": "x"}),
            json!({"query": "x", "currentFolder": null}),
            json!({"query": "x", "currentFolder": "/17", "budget": {"seconds": 0}}),
            json!({"query": "x", "currentFolder": "/17", "budget": {"results": "9"}}),
        ] {
            assert!(matches!(query(&bad), Err(Error::BadRequest(_))), "{bad}");
        }
    }
}
