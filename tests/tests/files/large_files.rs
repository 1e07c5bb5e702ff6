//! A GiB up and down again, byte for byte, with the memory of every process on the
//! way staying flat.

use super::*;

// ---- 1 GiB round trip with flat memory --------------------------------------

/// Peak memory (VmHWM) any part of a transfer may reach, in KiB. The gateway
/// relays through 1 MiB buffers and pipes and the plugin splices or sends files
/// without a buffer that grows with the file; 64 MiB is far above what they use
/// and far below the 1 GiB a whole-file buffer would take.
const FLAT_KIB: u64 = 64 << 10;
const GIB: usize = 1 << 30;
const CHUNK_16MB: usize = 16_000_000;

/// `(Name, real uid, VmHWM KiB)` of a process, if it still exists.
fn proc_status(pid: &str) -> Option<(String, u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let uid = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
    let hwm = field("VmHWM:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some((field("Name:")?, uid, hwm))
}

fn pids() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

/// The gateway process serving our end of `conn`: found by the server side's
/// socket inode (`/proc/net/tcp`), then the process holding that socket.
fn gateway_of(conn: &TcpStream) -> String {
    let (mine, theirs) = (
        conn.local_addr().unwrap().port(),
        conn.peer_addr().unwrap().port(),
    );
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    // The socket activator accepts, forks and execs the gateway: until it has
    // accepted, the connection's inode is 0. Wait for both (bounded).
    let started = std::time::Instant::now();
    let mut link = String::new();
    while started.elapsed().as_secs() < 5 {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let inode = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| port(f[1]) == theirs && port(f[2]) == mine)
            .map(|f| f[9].to_string())
            .expect("the gateway's side of our connection is in /proc/net/tcp");
        link = format!("socket:[{inode}]");
        if inode != "0" {
            for pid in pids() {
                let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                    continue;
                };
                let holds = fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == link)
                });
                if holds && proc_status(&pid).is_some_and(|(name, _, _)| name == "ucloud-gateway") {
                    return pid;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no ucloud-gateway process holds {link}");
}

/// Samples, until stopped, the peak memory of every process running as `uid` (the
/// plugins of the transfer; the dispatcher becomes the plugin by exec) and of
/// every `ucloud-dispatch` still before its exec. Returns `(pid, name, VmHWM)`s.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(String, String, u64)>>,
}

impl Sampler {
    fn start(uid: u32) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::<String, (String, u64)>::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for pid in pids() {
                    if let Some((name, u, hwm)) = proc_status(&pid) {
                        if u == uid || name == "ucloud-dispatch" {
                            let e = seen.entry(pid).or_insert((name.clone(), 0));
                            e.0 = name;
                            e.1 = e.1.max(hwm);
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            seen.into_iter().map(|(p, (n, h))| (p, n, h)).collect()
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Vec<(String, String, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A `sha256sum` reading what we write to it.
fn hasher() -> std::process::Child {
    Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) runs")
}

fn digest(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The bytes of chunk `i`: one random block, marked with the chunk's number so
/// that a chunk written in the wrong place changes the checksum.
fn chunk_bytes(block: &mut [u8], i: usize) {
    block[..8].copy_from_slice(&(i as u64).to_le_bytes());
}

/// GIB bytes (`block` refilled per chunk) sent to an upload link in 16 MB chunks on
/// one keep-alive connection, as a browser sends them: the digest of what was sent,
/// the seconds it took and the serving gateway's peak memory (KiB).
fn upload_gib(url: &str, token: &str, block: &mut [u8]) -> (String, f64, u64) {
    let (host, target) = split_url(url);
    let mut sent = hasher();
    let mut conn = TcpStream::connect(&host).unwrap();
    let gateway = gateway_of(&conn);
    let started = std::time::Instant::now();
    let mut offset = 0;
    for i in 0.. {
        if offset == GIB {
            break;
        }
        let n = CHUNK_16MB.min(GIB - offset);
        chunk_bytes(block, i);
        sent.stdin.as_mut().unwrap().write_all(&block[..n]).unwrap();
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {n}\r\n\
             Chunked-Upload-Token: {token}\r\nChunked-Upload-Offset: {offset}\r\n\
             Chunked-Upload-Total-Size: {GIB}\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&block[..n]).unwrap();
        let a = read_answer(&mut conn);
        assert_eq!(
            a.status,
            200,
            "chunk {i}: {}",
            String::from_utf8_lossy(&a.body)
        );
        offset += n;
        assert_eq!(a.json()["offset"], offset);
    }
    let up_secs = started.elapsed().as_secs_f64();
    let (_, _, gateway_hwm) = proc_status(&gateway).expect("the gateway is still serving us");
    drop(conn);
    (digest(sent), up_secs, gateway_hwm)
}

/// A download link read to its end, hashed as it arrives: the digest, the seconds
/// it took and the serving gateway's peak memory (KiB).
fn download_gib(url: &str, block: &mut [u8]) -> (String, f64, u64) {
    let (host, target) = split_url(url);
    let mut conn = TcpStream::connect(&host).unwrap();
    let download_gateway = gateway_of(&conn);
    let started = std::time::Instant::now();
    conn.write_all(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {GIB}\r\n")),
        "{head}"
    );
    let mut got = hasher();
    let mut left = GIB;
    while left > 0 {
        let n = conn.read(&mut block[..left.min(CHUNK_16MB)]).unwrap();
        assert!(n > 0, "the download ended {left} bytes early");
        got.stdin.as_mut().unwrap().write_all(&block[..n]).unwrap();
        left -= n;
    }
    let down_secs = started.elapsed().as_secs_f64();
    let (_, _, download_gateway_hwm) =
        proc_status(&download_gateway).expect("the gateway is still serving us");
    drop(conn);
    (digest(got), down_secs, download_gateway_hwm)
}

#[test]
fn a_gib_round_trips_byte_for_byte_with_flat_memory() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "files");
    let id = format!("/{d}/{}/gib.bin", s.dir);
    let (url, token) = create_upload(&stack, ALICE, &id, "REJECT");
    let mut block = vec![0u8; CHUNK_16MB];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut block)
        .unwrap();

    // Upload: 16 MB chunks on one keep-alive connection, as a browser sends them.
    let sampler = Sampler::start(uid_of(&alice));
    let (sent, up_secs, gateway_hwm) = upload_gib(&url, &token, &mut block);
    let uploaded = sampler.finish();
    assert_eq!(
        std::fs::metadata(s.local("gib.bin")).unwrap().len(),
        GIB as u64
    );
    assert_eq!(owner(&s.local("gib.bin")), uid_of(&alice));

    // Download through the chain, hashed as it arrives.
    let sampler = Sampler::start(uid_of(&alice));
    let (st, body) = create_download(&stack, ALICE, &id);
    assert_eq!(st, 200, "{body}");
    let url = body["responses"][0]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let (got, down_secs, download_gateway_hwm) = download_gib(&url, &mut block);
    let downloaded = sampler.finish();
    assert_eq!(got, sent, "the download is the upload, byte for byte");
    eprintln!(
        "1 GiB: upload {:.0} MB/s, download {:.0} MB/s; gateway peak {} / {} KiB",
        GIB as f64 / up_secs / 1e6,
        GIB as f64 / down_secs / 1e6,
        gateway_hwm,
        download_gateway_hwm
    );

    for (what, hwm) in [("upload", gateway_hwm), ("download", download_gateway_hwm)] {
        assert!(
            hwm > 0 && hwm < FLAT_KIB,
            "the gateway's peak memory during the {what} was {hwm} KiB (bound {FLAT_KIB})"
        );
    }
    for (what, seen) in [("upload", &uploaded), ("download", &downloaded)] {
        let top = seen.iter().max_by_key(|(_, _, hwm)| *hwm);
        eprintln!(
            "{what}: {} processes sampled, highest peak {top:?}",
            seen.len()
        );
        assert!(
            seen.iter().any(|(_, _, hwm)| *hwm > 0),
            "no plugin process of the {what} was sampled"
        );
        for (pid, name, hwm) in seen.iter() {
            assert!(
                *hwm < FLAT_KIB,
                "{name} (pid {pid}) peaked at {hwm} KiB during the {what} (bound {FLAT_KIB})"
            );
        }
    }
}
