//! The stack's services, stopped and started again by the tests that kill them.

use crate::Stack;
use std::path::{Path, PathBuf};
use std::process::Command;

impl Stack {
    /// The pid scripts/stack recorded for `service`.
    pub fn service_pid(&self, service: &str) -> i32 {
        std::fs::read_to_string(self.run_dir().join("pids").join(format!("{service}.pid")))
            .unwrap_or_else(|e| panic!("no pid file for {service}: {e}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Starts a service the way scripts/stack does (detached, clean environment,
    /// appending to its log) and records its pid. It outlives the test on purpose:
    /// scripts/stack stops it by that pid, so it is never waited for here.
    #[allow(clippy::zombie_processes)]
    pub fn start_like_the_stack(&self, service: &str, argv: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(PathBuf::from(self.get("UCLOUD_IM_STACK_LOGS")).join(format!("{service}.log")))
            .unwrap();
        let child = Command::new("setsid")
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .args(argv)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(
            self.run_dir().join("pids").join(format!("{service}.pid")),
            child.id().to_string(),
        )
        .unwrap();
    }

    /// The monitor again, exactly as scripts/stack starts it (its socket made by
    /// systemd-socket-activate, reports every 5 s), started by one event as Slurm's
    /// account, as the stack does.
    pub fn start_monitor(&self) {
        let socket = self.get("UCLOUD_IM_MONITOR_SOCKET");
        let _ = std::fs::remove_file(&socket);
        let user = self.get("UCLOUD_IM_MONITOR_USER");
        let monitor = self.bin("ucloud-monitor");
        self.start_like_the_stack(
            "monitor",
            &[
                "systemd-socket-activate",
                "-l",
                &socket,
                "setpriv",
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                "--bounding-set=-all",
                "--no-new-privs",
                monitor.to_str().unwrap(),
                "--usage-interval",
                "5",
            ],
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !Path::new(&socket).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the monitor's socket did not come back"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = Command::new("chmod").args(["0666", &socket]).status();
        let notify = self.prefix().join("usr/libexec/ucloud-im/ucloud-notify");
        let _ = Command::new("runuser")
            .current_dir("/")
            .args([
                "-u",
                "slurm",
                "--",
                "env",
                "SLURM_SCRIPT_CONTEXT=prolog_slurmctld",
                "SLURM_JOB_ID=0",
            ])
            .arg(notify)
            .args(["--socket", &socket])
            .status();
    }

    /// The sender again, as scripts/stack starts it.
    pub fn start_sender(&self) {
        let user = self.get("UCLOUD_IM_SENDER_USER");
        let sender = self.bin("ucloud-sender");
        self.start_like_the_stack(
            "sender",
            &[
                "setpriv",
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                sender.to_str().unwrap(),
            ],
        );
    }
}

/// `kill SIG PID`, which must succeed.
pub fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// SIGKILL, then waits (10 s at most) until the process is gone or a zombie.
pub fn kill_and_wait(pid: i32) {
    signal(pid, "-KILL");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Command::new("sh")
        .arg("-c")
        .arg(format!("ps -o stat= -p {pid} | grep -qv Z"))
        .status()
        .unwrap()
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} does not die"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
