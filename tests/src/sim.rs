//! UCloud as the simulator plays it: calls the way UCloud makes them, and the log of
//! what it heard.

use crate::stack::checked;
use crate::Stack;
use std::process::Command;

impl Stack {
    /// The simulator with none of the variables it takes defaults from: what a
    /// test's own environment holds (a sourced stack.env, say) changes nothing.
    pub(crate) fn sim(&self) -> Command {
        let mut command = Command::new(self.bin("ucloud-sim"));
        for name in ["UCLOUD_IM_LB_URL", "UCLOUD_IM_GATEWAY_URL", "UCLOUD_IM_CA"] {
            command.env_remove(name);
        }
        command
    }

    /// One of the simulator's own endpoints (`/sim/...`, no token: the test plays
    /// UCloud's users) over its TLS, giving up after `max_secs`: the status, and the
    /// body as JSON (a JSON string when it is not).
    pub fn sim_api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        max_secs: u32,
    ) -> (u16, serde_json::Value) {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", &max_secs.to_string()])
            .args(["--cacert", &self.get("UCLOUD_IM_CA")])
            .args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(body) = body {
            curl.args(["--data", &body.to_string()]);
        }
        let output = curl
            .arg(format!("{}{path}", self.get("UCLOUD_SIM_URL")))
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (
            status.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.into())),
        )
    }

    /// One call the way UCloud makes it (as `user`, or without a user), in plain HTTP
    /// to the direct gateway (`UCLOUD_IM_GATEWAY_URL`), no balancer in between.
    /// The body is parsed JSON, a JSON string for a text body, `Null` for an empty one.
    pub fn call(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        self.call_with(user, None, method, path, body)
    }

    /// Like [`Stack::call`], with an explicit bearer token (for hostile tokens).
    pub fn call_with(
        &self,
        user: Option<&str>,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        self.call_direct(&["call"], user, token, method, path, body)
    }

    /// Like [`Stack::call`], but a job creation goes as it is (`ucloud-sim call
    /// --unchecked`): for hostile tests of the provider with jobs UCloud never sends
    /// (an id that is no number, say), which the simulator would otherwise refuse
    /// itself, so that the provider's own refusal would go untested.
    pub fn call_unchecked(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        self.call_direct(&["call", "--unchecked"], user, None, method, path, body)
    }

    /// `ucloud-sim` with `words`, to the direct gateway.
    fn call_direct(
        &self,
        words: &[&str],
        user: Option<&str>,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let url = self.get("UCLOUD_IM_GATEWAY_URL");
        let mut command = self.sim();
        command.args(words).args(["--url", &url]);
        if url.starts_with("https:") {
            command.args(["--ca", &self.get("UCLOUD_IM_CA")]);
        }
        self.sim_call(command, user, token, method, path, body)
    }

    /// One call the way UCloud makes it, to where `ucloud-sim call` goes when given
    /// no `--url` in the stack's environment: the balancer (`UCLOUD_IM_LB_URL`, TLS
    /// verified against `UCLOUD_IM_CA`), as UCloud reaches a site.
    pub fn call_public(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut command = self.sim();
        for name in ["UCLOUD_IM_LB_URL", "UCLOUD_IM_GATEWAY_URL", "UCLOUD_IM_CA"] {
            command.env(name, self.get(name));
        }
        command.arg("call");
        self.sim_call(command, user, None, method, path, body)
    }

    fn sim_call(
        &self,
        mut command: Command,
        user: Option<&str>,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        command
            .args(["--signing-key", &self.get("UCLOUD_SIM_PRIVATE_KEY")])
            .args(["--state", &self.get("UCLOUD_IM_STATE")]);
        if let Some(user) = user {
            command.args(["--user", user]);
        }
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        command.args([method, path]);
        if let Some(body) = body {
            command.arg(body);
        }
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run ucloud-sim call: {e}"));
        let stdout = checked(&format!("ucloud-sim call {method} {path}"), &output);
        parse_call_output(&stdout)
            .unwrap_or_else(|why| panic!("ucloud-sim call {method} {path}: {why}"))
    }
}

/// Every request the simulator recorded, one JSON object per line of `UCLOUD_SIM_LOG`.
pub fn sim_log(stack: &Stack) -> Vec<serde_json::Value> {
    let path = stack.get("UCLOUD_SIM_LOG");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read the simulator's log {path}: {e}"),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{path} line {}: not JSON ({e}): {line}", index + 1))
        })
        .collect()
}

/// `ucloud-sim call` prints the status on the first line and the body after it.
pub fn parse_call_output(stdout: &str) -> Result<(u16, serde_json::Value), String> {
    let (first, body) = stdout.split_once('\n').unwrap_or((stdout, ""));
    let status = first
        .trim()
        .parse::<u16>()
        .map_err(|_| format!("expected a status code on the first line, got {first:?}"))?;
    let body = body.trim();
    let value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| serde_json::Value::String(body.into()))
    };
    Ok((status, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_output_is_status_then_body() {
        assert_eq!(
            parse_call_output("200\n{\"a\":1}\n").unwrap(),
            (200, serde_json::json!({"a": 1}))
        );
        assert_eq!(
            parse_call_output("404\nnot here\n").unwrap(),
            (404, serde_json::json!("not here"))
        );
        assert_eq!(
            parse_call_output("204\n").unwrap(),
            (204, serde_json::Value::Null)
        );
        assert!(parse_call_output("oops\n{}").is_err());
    }
}
