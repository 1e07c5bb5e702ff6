//! Links followed as a browser follows them (curl through the balancer), the raw
//! target behind them, and the balancer's metrics.

use crate::stack::checked;
use crate::Stack;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One HTTP answer as a client received it.
pub struct Fetched {
    /// The final status (an interim `100 Continue` is skipped).
    pub status: u16,
    /// The final response's head: status line and header lines.
    pub head: String,
    pub body: Vec<u8>,
}

impl Fetched {
    /// From curl's `-D` dump, which holds every response head in a row (interim
    /// ones first), and the body.
    fn new(dump: &str, body: Vec<u8>) -> Result<Fetched, String> {
        let head = dump
            .split("\r\n\r\n")
            .filter(|h| h.starts_with("HTTP/"))
            .last()
            .ok_or_else(|| format!("no response head in {dump:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        Ok(Fetched {
            status,
            head: head.to_string(),
            body,
        })
    }

    /// A header's value (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Stack {
    /// A whole file sent as one CHUNKED chunk to an upload link, followed as given
    /// ([`Stack::follow_link`]); `data` is curl's `--data-binary` argument
    /// (`@FILE` for a file).
    pub fn upload_in_one_chunk(&self, url: &str, token: &str, size: usize, data: &str) -> Fetched {
        self.follow_link(
            url,
            &[
                "-X",
                "POST",
                "-H",
                &format!("Chunked-Upload-Token: {token}"),
                "-H",
                "Chunked-Upload-Offset: 0",
                "-H",
                &format!("Chunked-Upload-Total-Size: {size}"),
                "--data-binary",
                data,
            ],
        )
    }

    /// Follows a link the way a browser follows one UCloud handed it: the URL as
    /// given (under the stack's public URL: https through the balancer), the server
    /// verified against the stack CA. `args` are curl options placed before the URL
    /// (method, headers, body).
    pub fn follow_link(&self, url: &str, args: &[&str]) -> Fetched {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let heads = std::env::temp_dir().join(format!(
            "ucloud-im-tests-head-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let output = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "120",
                "--cacert",
                &self.get("UCLOUD_IM_CA"),
            ])
            .arg("-D")
            .arg(&heads)
            .args(args)
            .arg(url)
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
        let head = std::fs::read_to_string(&heads).unwrap_or_default();
        let _ = std::fs::remove_file(&heads);
        if !output.status.success() {
            panic!(
                "curl {args:?} {url} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Fetched::new(&head, output.stdout)
            .unwrap_or_else(|why| panic!("curl {args:?} {url}: {why}"))
    }

    /// A link under the public URL (the balancer) rewritten onto the direct gateway
    /// behind it: (`host:port`, `/path?query`), for tests that write every byte of
    /// the plain HTTP/1.1 request themselves. The same program answers both.
    pub fn direct_target(&self, url: &str) -> (String, String) {
        let public = self.get("UCLOUD_IM_LB_URL");
        let target = url
            .strip_prefix(&public)
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or_else(|| panic!("{url} is not under the public URL {public}"));
        let gateway = self.get("UCLOUD_IM_GATEWAY_URL");
        let authority = gateway
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the direct gateway speaks plain http, got {gateway}"));
        (authority.to_string(), target.to_string())
    }

    /// One counter or gauge of the stack's balancer (`UCLOUD_IM_LB_METRICS`), by its
    /// full name with labels.
    pub fn lb_metric(&self, name: &str) -> u64 {
        let url = self.get("UCLOUD_IM_LB_METRICS");
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "10", &url])
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
        let text = checked(&format!("curl {url}"), &output);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} at {url}:\n{text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetched_is_the_final_response() {
        let f = Fetched::new(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n",
            b"hi".to_vec(),
        )
        .unwrap();
        assert_eq!(f.status, 200);
        assert_eq!(f.header("content-type"), Some("text/html"));
        assert_eq!(f.header("content-length"), None);
        assert_eq!(f.text(), "hi");
        assert!(Fetched::new("", Vec::new()).is_err());
    }
}
