//! The site of hosts `scripts/stack up --hosts` makes: each host a network namespace
//! with its own address and hostname, and its own run/ in the prefix. Commands run on
//! a host through nsenter; a host goes down by its link or by every process in its
//! namespace being killed, and comes back through `scripts/stack restart-host`.

use crate::stack::checked;
use crate::Stack;
use std::path::Path;
use std::process::{Command, Output};

pub struct Site {
    pub stack: Stack,
    pub hosts: Vec<String>,
}

impl Site {
    /// The running site; a one-machine stack is a failure that says what to run.
    pub fn load() -> Site {
        let stack = Stack::load();
        let hosts: Vec<String> = match stack.try_get("UCLOUD_IM_HOSTS") {
            Some(hosts) => hosts.split_whitespace().map(String::from).collect(),
            None => panic!(
                "the stack is not a site of hosts: run scripts/stack up --hosts first \
                 (scripts/test runs this suite last, after bringing the site up)"
            ),
        };
        Site { stack, hosts }
    }

    pub fn addr(&self, host: &str) -> String {
        self.stack.get(&format!("UCLOUD_IM_HOST_{host}_ADDR"))
    }

    pub fn ns(&self, host: &str) -> String {
        self.stack.get(&format!("UCLOUD_IM_HOST_{host}_NS"))
    }

    /// `argv` on `host`: its network, hostname and mounts.
    pub fn on(&self, host: &str, argv: &[&str]) -> Command {
        let dir = self.stack.get("UCLOUD_IM_SITE_DIR");
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.ns(host)))
            .arg(format!("--mount={dir}/{host}.mnt"))
            .arg(format!("--uts={dir}/{host}.uts"))
            .arg("--")
            .args(argv);
        command
    }

    /// `sh -c script` on `host`, its output whatever the exit status.
    pub fn sh(&self, host: &str, script: &str) -> Output {
        self.on(host, &["sh", "-c", script])
            .output()
            .unwrap_or_else(|e| panic!("cannot run nsenter for {host}: {e}"))
    }

    /// `sh -c script` on `host`, which must succeed: its stdout.
    pub fn sh_ok(&self, host: &str, script: &str) -> String {
        checked(&format!("on {host}: {script}"), &self.sh(host, script))
    }

    /// The host's link to the bridge, down or up (the machine's end of its veth).
    pub fn link(&self, host: &str, up: bool) {
        let out = Command::new("ip")
            .args([
                "link",
                "set",
                &self.ns(host),
                if up { "up" } else { "down" },
            ])
            .output()
            .expect("ip");
        checked(&format!("ip link set {} up={up}", self.ns(host)), &out);
    }

    /// Every process on `host` killed at once (SIGKILL), and its link down: the host
    /// died. Returns how many processes it had.
    pub fn kill_host(&self, host: &str) -> usize {
        self.link(host, false);
        let mut killed = 0;
        // A process may fork while the first ones die: until none is left.
        for _ in 0..20 {
            let out = Command::new("ip")
                .args(["netns", "pids", &self.ns(host)])
                .output()
                .expect("ip netns pids");
            let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if pids.is_empty() {
                return killed;
            }
            killed += pids.len();
            let _ = Command::new("kill").arg("-KILL").args(&pids).status();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("processes on {host} do not die");
    }

    /// The host back: link up and its services started again, as the stack starts them.
    pub fn restart_host(&self, host: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack");
        let out = Command::new(script)
            .args(["restart-host", host])
            .output()
            .expect("scripts/stack restart-host");
        checked(&format!("scripts/stack restart-host {host}"), &out);
    }

    /// Whether the edge balancer counts login host `backend` as up.
    pub fn backend_up(&self, backend: &str) -> bool {
        self.stack
            .lb_metric(&format!("ucloud_lb_backend_up{{backend=\"{backend}\"}}"))
            == 1
    }
}
