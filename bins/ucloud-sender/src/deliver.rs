//! Delivering the outbox: in name order, one message at a time, each until UCloud
//! has taken it (2xx) or refused it for good (a 4xx other than 401/408/429). A
//! message leaves `queue/` only after one of those answers, so UCloud being down,
//! slow or restarting loses nothing and reorders nothing. A crash between UCloud's
//! answer and the removal delivers that message once more (at least once).
//!
//! Usage reports (`usage/`, ucloud_wire::usage) are not in that line: each is the
//! latest absolute total of its key, so order among them does not matter and a
//! newer one replaces an older one not yet sent. They go out in bulk calls between
//! queued messages and between the retries of a stuck one, one attempt each time,
//! with their own backoff: a report UCloud does not take holds up nothing, and a
//! stuck message holds up no report.
//!
//! Where several hosts share the outbox, only the holder of the sender's lease
//! delivers ([`Sender::fence`]): it asks the lease before every send and claims
//! each message before it sends it (claims.rs), so a holder that paused and came
//! back sends nothing a successor has taken over.

use crate::claims::{self, Claimed};
use crate::error::SendError;
use crate::tokens::{excerpt, Tokens};
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use ucloud_http::client::{Client, ClientError, Response};
use ucloud_wire::lease::{Keeper, Token};
use ucloud_wire::outbox::{self, Message, Method};
use ucloud_wire::usage::{self, Report};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// With `--once`, a message gets this many tries before the run gives up.
pub const ONCE_ATTEMPTS: u32 = 4;

pub struct Sender {
    client: Client,
    tokens: Tokens,
    outbox: PathBuf,
    /// Usage reports wait until then after UCloud did not take them.
    usage_due: Instant,
    usage_backoff: Duration,
    /// The lease this sender delivers under, and the token it took over with.
    fence: Option<(Keeper, Token)>,
    /// The lease was lost: the current drain stops.
    lost: bool,
}

/// What became of one attempt.
enum Outcome {
    /// UCloud took it; the body of its answer.
    Delivered(u16, Vec<u8>),
    /// UCloud refuses it for good.
    Refused(u16, Vec<u8>),
    /// Try again later; why not now.
    Retry(String),
}

/// UCloud's bulk calls take this many items at most (as UCloud's own modules send).
const USAGE_BATCH: usize = 500;
const REPORT_USAGE: &str = "/api/accounting/v2/reportUsage";

fn classify(result: Result<Response, ClientError>) -> Outcome {
    match result {
        Err(e) => Outcome::Retry(e.to_string()),
        Ok(r) if (200..300).contains(&r.status) => Outcome::Delivered(r.status, r.body),
        Ok(r) if (400..500).contains(&r.status) && !matches!(r.status, 401 | 408 | 429) => {
            Outcome::Refused(r.status, r.body)
        }
        Ok(r) => Outcome::Retry(format!(
            "UCloud answered {}: {}",
            r.status,
            excerpt(&r.body)
        )),
    }
}

/// A short, single-line view of a body for the log.
/// Removes a delivered message or report; one already gone is as good.
fn remove_delivered(path: &Path) -> Result<(), SendError> {
    fs::remove_file(path).or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(SendError::Setup(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
    })
}

/// Writes `bytes` to `dir/name` through `tmp/` and a rename, so that readers never
/// see half a file.
pub(crate) fn write_atomically(
    outbox: &Path,
    dir: &str,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let tmp = outbox
        .join(outbox::TMP)
        .join(format!("sender-{}-{name}", std::process::id()));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, outbox.join(dir).join(name))?;
    File::open(outbox.join(dir))?.sync_all()
}

impl Sender {
    pub fn new(client: Client, refresh_token: String, outbox: PathBuf) -> Sender {
        Sender {
            client,
            tokens: Tokens::new(refresh_token),
            outbox,
            usage_due: Instant::now(),
            usage_backoff: FIRST_BACKOFF,
            fence: None,
            lost: false,
        }
    }

    /// From now on delivers only while `keeper` holds `token`, claiming each
    /// message first. The caller has taken over the claims of older tokens
    /// (`claims::take_over`).
    pub fn fence(&mut self, keeper: Keeper, token: Token) {
        self.fence = Some((keeper, token));
        self.lost = false;
    }

    /// Whether this sender may act now (it holds the lease it was fenced with).
    fn may_act(&mut self) -> bool {
        let Some((keeper, token)) = &self.fence else {
            return true;
        };
        match keeper.check() {
            Ok(t) if t == *token => true,
            _ => {
                self.lost = true;
                false
            }
        }
    }

    /// One exchange with UCloud under the provider's access token, for the sender's
    /// own business (products.rs); `Err` when UCloud could not be reached or gave no
    /// token. No retry here: the caller decides.
    pub fn call(
        &mut self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Vec<u8>), String> {
        let message = Message {
            method,
            path: path.to_string(),
            body: body.clone(),
            reply: None,
        };
        match self.attempt(&message) {
            Outcome::Delivered(status, body) | Outcome::Refused(status, body) => Ok((status, body)),
            Outcome::Retry(why) => Err(why),
        }
    }

    fn attempt(&mut self, message: &Message) -> Outcome {
        let token = match self.tokens.access_token(&mut self.client) {
            Ok(t) => t,
            Err(why) => return Outcome::Retry(why),
        };
        let authorization = format!("Bearer {token}");
        let result = match message.method {
            Method::Post => self.client.send(
                "POST",
                &message.path,
                &[
                    ("Authorization", &authorization),
                    ("Content-Type", "application/json"),
                    ("Accept", "application/json"),
                ],
                message.body.to_string().as_bytes(),
            ),
            // A retrieve: UCloud takes its parameters from the query, never a body.
            Method::Get => self.client.send(
                "GET",
                &message.path,
                &[
                    ("Authorization", &authorization),
                    ("Accept", "application/json"),
                ],
                b"",
            ),
        };
        if matches!(&result, Ok(r) if r.status == 401) {
            // Revoked or expired early: the next attempt gets a new token.
            self.tokens.forget();
        }
        classify(result)
    }

    /// Delivers everything queued, oldest first, and the usage reports beside it.
    /// Returns when the queue is empty (`Ok(true)`), or with `once` when a message
    /// or the usage reports could not be delivered in [`ONCE_ATTEMPTS`] tries
    /// (`Ok(false)`). Without `once` it retries forever.
    /// With a fence, it returns `Ok(false)` as soon as the lease is lost.
    pub fn drain(&mut self, once: bool) -> Result<bool, SendError> {
        loop {
            if !self.may_act() {
                return Ok(false);
            }
            self.usage_pass()?;
            let queue = outbox::queued(&self.outbox).map_err(|e| {
                SendError::Setup(format!(
                    "cannot list {}: {e}",
                    self.outbox.join(outbox::QUEUE).display()
                ))
            })?;
            if queue.is_empty() {
                if !once {
                    return Ok(true);
                }
                for _ in 0..ONCE_ATTEMPTS {
                    self.usage_due = Instant::now();
                    if self.usage_pass()? {
                        return Ok(true);
                    }
                    std::thread::sleep(self.usage_backoff);
                }
                return Ok(false);
            }
            for path in queue {
                if !self.deliver(&path, once)? || self.lost {
                    return Ok(false);
                }
                self.usage_pass()?;
            }
        }
    }

    /// One attempt at every usage report waiting, unless the last one failed too
    /// recently. `Ok(true)`: none is left.
    fn usage_pass(&mut self) -> Result<bool, SendError> {
        if Instant::now() < self.usage_due {
            return Ok(false);
        }
        let claimed = match usage::claim(&self.outbox) {
            Ok(c) => c,
            // An outbox made before usage reports existed: nothing to report.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(e) => {
                return Err(SendError::Setup(format!(
                    "cannot claim usage reports in {}: {e}",
                    self.outbox.join(usage::USAGE).display()
                )))
            }
        };
        let mut reports = Vec::new();
        for path in claimed {
            match fs::read(&path).map(|b| Report::from_json(&b)) {
                Ok(Ok(report)) => reports.push((path, report)),
                Ok(Err(e)) => {
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("x");
                    ucloud_wire::log_err!(
                        "ucloud-sender: usage report {name}: {e}; moved to failed/"
                    );
                    self.fail_usage(&path, json!({"status": null, "error": e.to_string()}))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SendError::Setup(format!(
                        "cannot read {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        for batch in reports.chunks(USAGE_BATCH) {
            // Totals are absolute: a report a successor sends again charges
            // nothing twice, so the lease check is all the fencing they need.
            if !self.may_act() {
                return Ok(false);
            }
            if !self.report(batch)? {
                self.usage_due = Instant::now() + self.usage_backoff;
                self.usage_backoff = (self.usage_backoff * 2).min(MAX_BACKOFF);
                return Ok(false);
            }
        }
        self.usage_backoff = FIRST_BACKOFF;
        Ok(true)
    }

    /// One bulk `reportUsage`. UCloud refuses a whole batch for one bad item, so a
    /// refused batch is sent again item by item, and only the refused items move to
    /// `failed/`. `Ok(false)`: UCloud did not answer; try later.
    fn report(&mut self, batch: &[(PathBuf, Report)]) -> Result<bool, SendError> {
        let started = Instant::now();
        let message = Message {
            method: Method::Post,
            path: REPORT_USAGE.into(),
            body: json!({"items": batch.iter().map(|(_, r)| r.item()).collect::<Vec<_>>()}),
            reply: None,
        };
        match self.attempt(&message) {
            Outcome::Delivered(status, _) => {
                for (path, _) in batch {
                    remove_delivered(path)?;
                }
                ucloud_wire::log_info!(
                    "ucloud-sender: delivered {} usage report(s) POST {REPORT_USAGE} -> {status} ({} ms)",
                    batch.len(),
                    started.elapsed().as_millis()
                );
                Ok(true)
            }
            Outcome::Refused(status, body) if batch.len() == 1 => {
                ucloud_wire::log_err!(
                    "ucloud-sender: UCloud refused usage report {} -> {status}: {}; moved to failed/",
                    batch[0].0.display(),
                    excerpt(&body)
                );
                let body = serde_json::from_slice::<Value>(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
                self.fail_usage(&batch[0].0, json!({"status": status, "body": body}))?;
                Ok(true)
            }
            Outcome::Refused(..) => {
                for one in batch {
                    if !self.report(std::slice::from_ref(one))? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Outcome::Retry(why) => {
                ucloud_wire::log_warn!(
                    "ucloud-sender: {} usage report(s) not delivered: {why}",
                    batch.len()
                );
                Ok(false)
            }
        }
    }

    /// Moves a claimed usage report to `failed/usage-<name>.json`, with UCloud's
    /// answer beside it.
    fn fail_usage(&self, path: &Path, response: Value) -> Result<(), SendError> {
        let stem = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("x")
            .to_string();
        let name = format!("usage-{stem}");
        let mut response = response;
        response["time"] = json!(ucloud_wire::now_ms());
        write_atomically(
            &self.outbox,
            outbox::FAILED,
            &format!("{name}.response"),
            response.to_string().as_bytes(),
        )
        .and_then(|_| {
            fs::rename(
                path,
                self.outbox
                    .join(outbox::FAILED)
                    .join(format!("{name}.json")),
            )
        })
        .map_err(|e| SendError::Setup(format!("cannot move {} to failed/: {e}", path.display())))
    }

    /// One message, retried with backoff. `Ok(false)`: gave up (only with `once`),
    /// or the lease was lost.
    fn deliver(&mut self, queued: &Path, once: bool) -> Result<bool, SendError> {
        let name = queued
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !self.may_act() {
            return Ok(false);
        }
        let claimed = match &self.fence {
            None => queued.to_path_buf(),
            Some((_, token)) => match claims::claim(&self.outbox, *token, queued) {
                Ok(Claimed::Ours(path)) => path,
                Ok(Claimed::Gone) => return Ok(true),
                Ok(Claimed::Revoked) => {
                    ucloud_wire::log_err!(
                        "ucloud-sender: the claims of token {token} were revoked: another host took over the outbox"
                    );
                    self.lost = true;
                    return Ok(false);
                }
                Err(e) => {
                    return Err(SendError::Setup(format!(
                        "cannot claim {} for delivery: {e}",
                        queued.display()
                    )))
                }
            },
        };
        let path = claimed.as_path();
        let bytes = match fs::read(path) {
            Ok(b) => b,
            // Taken away by an admin in the meantime: nothing to deliver.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(e) => {
                return Err(SendError::Setup(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        let message = match Message::from_json(&bytes) {
            Ok(m) => m,
            Err(e) => {
                ucloud_wire::log_err!(
                    "ucloud-sender: {name}: not a valid message ({e}); moved to failed/"
                );
                self.fail(path, &name, json!({"status": null, "error": e.to_string()}))?;
                return Ok(true);
            }
        };
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        loop {
            attempts += 1;
            // A claim of a sender that lost its lease stays where it is: the
            // successor puts it back into the queue.
            if !self.may_act() {
                return Ok(false);
            }
            let started = Instant::now();
            match self.attempt(&message) {
                Outcome::Delivered(status, body) => {
                    if let Some(tag) = &message.reply {
                        write_atomically(
                            &self.outbox,
                            outbox::REPLIES,
                            &format!("{tag}.json"),
                            &body,
                        )
                        .map_err(|e| {
                            SendError::Setup(format!("cannot store the reply {tag}: {e}"))
                        })?;
                    }
                    if self.fence.is_some() && !path.exists() {
                        ucloud_wire::log_warn!(
                            "ucloud-sender: {name} was delivered after another host took over the outbox; it may reach UCloud twice"
                        );
                    }
                    remove_delivered(path)?;
                    ucloud_wire::log_info!(
                        "ucloud-sender: delivered {name} {} {} -> {status} ({} ms){}",
                        message.method.name(),
                        message.path,
                        started.elapsed().as_millis(),
                        message
                            .reply
                            .as_deref()
                            .map(|t| format!(", reply {t}"))
                            .unwrap_or_default()
                    );
                    return Ok(true);
                }
                Outcome::Refused(status, body) => {
                    ucloud_wire::log_err!(
                        "ucloud-sender: UCloud refused {name} {} {} -> {status}: {}; moved to failed/",
                        message.method.name(),
                        message.path,
                        excerpt(&body)
                    );
                    let body = serde_json::from_slice::<Value>(&body).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&body).into_owned())
                    });
                    self.fail(path, &name, json!({"status": status, "body": body}))?;
                    return Ok(true);
                }
                Outcome::Retry(why) => {
                    ucloud_wire::log_warn!(
                        "ucloud-sender: {name} {} {} not delivered (try {attempts}): {why}",
                        message.method.name(),
                        message.path
                    );
                    if once && attempts >= ONCE_ATTEMPTS {
                        if self.fence.is_some() {
                            claims::unclaim(&self.outbox, path).map_err(|e| {
                                SendError::Setup(format!(
                                    "cannot put {name} back into the queue: {e}"
                                ))
                            })?;
                        }
                        return Ok(false);
                    }
                    // A stuck message holds up no usage report.
                    self.usage_pass()?;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Moves a message (queued or claimed, at `from`) to `failed/`, with UCloud's
    /// answer beside it.
    fn fail(&self, from: &Path, name: &str, response: Value) -> Result<(), SendError> {
        let mut response = response;
        response["time"] = json!(ucloud_wire::now_ms());
        let stem = name.strip_suffix(".json").unwrap_or(name);
        write_atomically(
            &self.outbox,
            outbox::FAILED,
            &format!("{stem}.response"),
            response.to_string().as_bytes(),
        )
        .and_then(|_| fs::rename(from, self.outbox.join(outbox::FAILED).join(name)))
        .map_err(|e| SendError::Setup(format!("cannot move {name} to failed/: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16) -> Result<Response, ClientError> {
        Ok(Response {
            status,
            headers: vec![],
            body: b"{}".to_vec(),
            reusable: true,
        })
    }

    #[test]
    fn statuses_decide_between_done_failed_and_retry() {
        assert!(matches!(
            classify(response(200)),
            Outcome::Delivered(200, _)
        ));
        assert!(matches!(
            classify(response(204)),
            Outcome::Delivered(204, _)
        ));
        for s in [400, 403, 404, 409, 422] {
            assert!(matches!(classify(response(s)), Outcome::Refused(..)), "{s}");
        }
        for s in [401, 408, 429, 500, 502, 503, 504, 302] {
            assert!(matches!(classify(response(s)), Outcome::Retry(_)), "{s}");
        }
        assert!(matches!(
            classify(Err(ClientError::Timeout)),
            Outcome::Retry(_)
        ));
    }

    #[test]
    fn excerpts_are_one_line() {
        assert_eq!(excerpt(b"a\nb"), "ab");
    }

    /// A UCloud that takes job updates but answers 503 to reportUsage until told
    /// otherwise; records the paths it was called with.
    fn fake_ucloud(
        usage_ok: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> (String, std::sync::mpsc::Receiver<(String, String)>) {
        use std::io::{BufRead, BufReader, Read};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let (status, answer) = if path == "/auth/providers/refresh" {
                        (
                            200,
                            r#"{"responses":[{"accessToken":"a.b.c"}]}"#.to_string(),
                        )
                    } else if path == REPORT_USAGE
                        && !usage_ok.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        (503, "{}".to_string())
                    } else {
                        (200, "{}".to_string())
                    };
                    let _ = tx.send((path, String::from_utf8_lossy(&body).into_owned()));
                    let _ = write!(
                        writer,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                }
            }
        });
        (url, rx)
    }

    /// A fresh outbox of this process named `name` under the temp dir, with its
    /// directories and `extra` ones.
    fn outbox_at(name: &str, extra: &[&str]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let subs = [
            outbox::TMP,
            outbox::QUEUE,
            outbox::REPLIES,
            outbox::FAILED,
            usage::USAGE,
        ];
        for sub in subs.iter().chain(extra) {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        dir
    }

    #[test]
    fn a_usage_report_ucloud_does_not_take_holds_up_nothing() {
        let dir = outbox_at("sender-usage", &[]);
        let report = |scope: &str, total: u64| Report {
            owner: usage::WalletOwner::User("Alice#1".into()),
            category: "cpu".into(),
            provider: "hpc".into(),
            scope: scope.into(),
            usage: total,
        };
        usage::put(&dir, &report("job-1", 5)).unwrap();
        usage::put(&dir, &report("job-2", 7)).unwrap();
        let update = |n: u64| Message {
            method: Method::Post,
            path: "/api/jobs/control/update".into(),
            body: json!({"items": [n]}),
            reply: None,
        };
        outbox::enqueue(&dir, &update(1)).unwrap();
        outbox::enqueue(&dir, &update(2)).unwrap();
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (url, calls) = fake_ucloud(ok.clone());
        let endpoint =
            ucloud_http::client::Endpoint::new(&url, None, Duration::from_secs(5)).unwrap();
        let mut sender = Sender::new(Client::new(endpoint), "t".into(), dir.clone());
        let started = Instant::now();
        assert!(sender.drain(false).unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "usage held up the queue"
        );
        assert!(outbox::queued(&dir).unwrap().is_empty());
        let seen: Vec<(String, String)> = calls.try_iter().collect();
        let updates: Vec<&String> = seen
            .iter()
            .filter(|(p, _)| p == "/api/jobs/control/update")
            .map(|(_, b)| b)
            .collect();
        assert_eq!(updates.len(), 2, "{seen:?}");
        assert!(updates[0].contains("[1]") && updates[1].contains("[2]"));
        assert_eq!(
            usage::claim(&dir).unwrap().len(),
            2,
            "the refused reports stay"
        );
        // A newer total of job-1 merges with the one waiting; then UCloud takes them.
        usage::put(&dir, &report("job-1", 9)).unwrap();
        ok.store(true, std::sync::atomic::Ordering::SeqCst);
        sender.usage_due = Instant::now();
        assert!(sender.usage_pass().unwrap());
        let (_, body) = calls
            .try_iter()
            .find(|(p, _)| p == REPORT_USAGE)
            .expect("a usage call");
        let v: Value = serde_json::from_str(&body).unwrap();
        let mut totals: Vec<(String, u64)> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["description"]["scope"].as_str().unwrap().to_string(),
                    i["usage"].as_u64().unwrap(),
                )
            })
            .collect();
        totals.sort();
        assert_eq!(totals, [("job-1".to_string(), 9), ("job-2".to_string(), 7)]);
        assert!(usage::claim(&dir).unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_sender_that_lost_its_lease_sends_nothing_and_loses_nothing() {
        use ucloud_wire::lease::{Holder, Lease, Timing};
        let dir = outbox_at("sender-fenced", &[claims::CLAIMED, "leases/sender"]);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join("leases/sender"), fs::Permissions::from_mode(0o755)).unwrap();
        let timing = Timing {
            ttl: Duration::from_millis(300),
            skew: Duration::from_millis(50),
        };
        let keeper = |host: &str| {
            let lease = Lease::open(
                &dir.join("leases"),
                "sender",
                Holder {
                    host: host.into(),
                    pid: 1,
                },
                timing,
            )
            .unwrap();
            let outbox = dir.clone();
            Keeper::spawn(
                lease,
                "test",
                Some(Box::new(move |t| claims::prepare(&outbox, t))),
            )
            .unwrap()
        };
        let update = |n: u64| Message {
            method: Method::Post,
            path: "/api/jobs/control/update".into(),
            body: json!({ "items": [n] }),
            reply: None,
        };
        let (url, calls) = fake_ucloud(std::sync::Arc::new(true.into()));
        let client = || {
            Client::new(
                ucloud_http::client::Endpoint::new(&url, None, Duration::from_secs(5)).unwrap(),
            )
        };
        let a = keeper("a");
        let token_a = a.check().unwrap();
        claims::take_over(&dir, token_a).unwrap();
        let mut sender_a = Sender::new(client(), "t".into(), dir.clone());
        sender_a.fence(a.clone(), token_a);
        outbox::enqueue(&dir, &update(1)).unwrap();
        assert!(sender_a.drain(false).unwrap());
        assert!(outbox::queued(&dir).unwrap().is_empty());
        // A's host hangs; B takes over; A's claim of a message it had begun is
        // put back.
        let b = keeper("b");
        a.stop_renewing();
        let token_b = b
            .wait_held(timing.takeover_bound() * 2)
            .expect("B takes over");
        let stranded = outbox::enqueue(&dir, &update(2)).unwrap();
        let claims_a = claims::claims_dir(&dir).join(token_a.name());
        fs::rename(&stranded, claims_a.join(stranded.file_name().unwrap())).unwrap();
        outbox::enqueue(&dir, &update(3)).unwrap();
        assert_eq!(claims::take_over(&dir, token_b).unwrap(), 1);
        assert_eq!(outbox::queued(&dir).unwrap().len(), 2);
        // A wakes up: it delivers nothing and takes nothing.
        let before = calls.try_iter().count();
        assert!(!sender_a.drain(false).unwrap());
        assert_eq!(calls.try_iter().count(), 0, "after {before} calls");
        assert_eq!(outbox::queued(&dir).unwrap().len(), 2);
        // Even told it may act, its claim would fail: its directory is gone.
        let first = outbox::queued(&dir).unwrap()[0].clone();
        assert_eq!(
            claims::claim(&dir, token_a, &first).unwrap(),
            claims::Claimed::Revoked
        );
        // B delivers both, in order (the fake serves one connection at a time).
        drop(sender_a);
        let mut sender_b = Sender::new(client(), "t".into(), dir.clone());
        sender_b.fence(b.clone(), token_b);
        assert!(sender_b.drain(false).unwrap());
        let bodies: Vec<String> = calls
            .try_iter()
            .filter(|(p, _)| p == "/api/jobs/control/update")
            .map(|(_, b)| b)
            .collect();
        assert_eq!(bodies.len(), 2, "{bodies:?}");
        assert!(bodies[0].contains("[2]") && bodies[1].contains("[3]"));
        b.release();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn replies_and_failures_land_whole() {
        let dir = std::env::temp_dir().join(format!("sender-outbox-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in [outbox::TMP, outbox::QUEUE, outbox::REPLIES, outbox::FAILED] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        write_atomically(
            &dir,
            outbox::REPLIES,
            "drive-41.json",
            b"{\"responses\":[]}",
        )
        .unwrap();
        assert_eq!(
            fs::read(dir.join("replies/drive-41.json")).unwrap(),
            b"{\"responses\":[]}"
        );
        assert_eq!(fs::read_dir(dir.join(outbox::TMP)).unwrap().count(), 0);

        let queued = outbox::enqueue(
            &dir,
            &Message {
                method: Method::Post,
                path: "/api/x".into(),
                body: json!({}),
                reply: None,
            },
        )
        .unwrap();
        let name = queued.file_name().unwrap().to_str().unwrap().to_string();
        let endpoint =
            ucloud_http::client::Endpoint::new("http://127.0.0.1:9", None, Duration::from_secs(1))
                .unwrap();
        let sender = Sender::new(Client::new(endpoint), "t".into(), dir.clone());
        sender.fail(&queued, &name, json!({"status": 400})).unwrap();
        assert!(!queued.exists());
        assert!(dir.join(outbox::FAILED).join(&name).exists());
        let stem = name.strip_suffix(".json").unwrap();
        let response: Value = serde_json::from_slice(
            &fs::read(dir.join(outbox::FAILED).join(format!("{stem}.response"))).unwrap(),
        )
        .unwrap();
        assert_eq!(response["status"], 400);
        fs::remove_dir_all(dir).unwrap();
    }
}
