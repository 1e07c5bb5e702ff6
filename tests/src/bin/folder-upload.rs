//! WEBSOCKET_V2 folder upload client for `scripts/bench-folder`: uploads the tree
//! under DIR to a FOLDER item's link on the direct gateway as UCloud's web client
//! does (listings of at most 64 KiB, each file's data once the server answers OK,
//! at most 256 files started beyond the DONE count), waits until every file is
//! counted, closes, and prints the seconds it took. Fails unless the close is 1000.
//!
//!   folder-upload ADDR TARGET DIR      TARGET: path and query of the link
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;
use ucloud_im_tests::{ws_server_frame, ws_upgrade};

const IN_FLIGHT: u32 = 256;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, target, dir] = &args[..] else {
        eprintln!("usage: folder-upload ADDR TARGET DIR");
        std::process::exit(64);
    };
    let mut files = Vec::new();
    walk(Path::new(dir), Path::new(""), &mut files);
    let n = files.len() as u32;
    let start = Instant::now();
    let (head, mut ws) = ws_upgrade(addr, target, "");
    if !head.starts_with("HTTP/1.1 101") {
        fail(&format!("no WebSocket: {head}"));
    }
    ws.set_read_timeout(None).unwrap();
    let mut reader = ws.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        match ws_server_frame(&mut reader) {
            Ok((0x2, m)) => {
                for a in m.chunks_exact(5) {
                    let _ = tx.send(Ok((a[0], u32::from_be_bytes(a[1..5].try_into().unwrap()))));
                }
            }
            Ok((0x8, body)) if body.len() >= 2 => {
                let code = u16::from_be_bytes([body[0], body[1]]);
                let why = String::from_utf8_lossy(&body[2..]);
                let _ = tx.send(Err(format!("{code} {why}")));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
    });
    let mut message = vec![4u8];
    for (id, (rel, size)) in files.iter().enumerate() {
        if message.len() > 60 << 10 {
            ws.write_all(&frame(0x2, &message)).unwrap();
            message.truncate(1);
        }
        let path = rel.to_str().unwrap();
        message.extend_from_slice(&(id as u32).to_be_bytes());
        message.extend_from_slice(&size.to_be_bytes());
        message.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        message.extend_from_slice(&(path.len() as u32).to_be_bytes());
        message.extend_from_slice(path.as_bytes());
    }
    ws.write_all(&frame(0x2, &message)).unwrap();
    let (mut started, mut done) = (0u32, 0u32);
    let mut queue = VecDeque::new();
    while done < n {
        let first = rx.recv().unwrap();
        for answer in std::iter::once(first).chain(rx.try_iter()) {
            match answer {
                Ok((0, id)) => queue.push_back(id),
                Ok((3, _)) => {}
                Ok((5, count)) => done = count,
                Ok((op, _)) => fail(&format!("opcode {op} from the server")),
                Err(why) => fail(&format!("closed: {why}")),
            }
        }
        let mut out = Vec::new();
        while started - done.min(started) < IN_FLIGHT {
            let Some(id) = queue.pop_front() else { break };
            let mut m = vec![2u8];
            m.extend_from_slice(&id.to_be_bytes());
            m.extend_from_slice(
                &std::fs::read(Path::new(dir).join(&files[id as usize].0)).unwrap(),
            );
            out.extend_from_slice(&frame(0x2, &m));
            started += 1;
        }
        ws.write_all(&out).unwrap();
    }
    ws.write_all(&frame(0x8, &1000u16.to_be_bytes())).unwrap();
    match rx.recv() {
        Err(_) => {}
        Ok(Err(why)) if why.starts_with("1000 ") => {}
        Ok(other) => fail(&format!("no clean close: {other:?}")),
    }
    println!("{:.3}", start.elapsed().as_secs_f64());
}

/// The regular files below `dir`, by path relative to the top, with their sizes.
fn walk(top: &Path, rel: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let mut entries: Vec<_> = std::fs::read_dir(top.join(rel))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let t = e.file_type().unwrap();
        if t.is_dir() {
            walk(top, &r, out);
        } else if t.is_file() {
            out.push((r, e.metadata().unwrap().len()));
        }
    }
}

/// A client frame, masked a word at a time.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x3d, 0x91, 0x0e, 0x72];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    let start = f.len();
    f.extend_from_slice(payload);
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut words = f[start..].chunks_exact_mut(8);
    for w in &mut words {
        let x = u64::from_ne_bytes((&*w).try_into().unwrap()) ^ word;
        w.copy_from_slice(&x.to_ne_bytes());
    }
    let tail = words.into_remainder();
    tail.iter_mut()
        .zip(&word.to_ne_bytes())
        .for_each(|(b, m)| *b ^= m);
    f
}

fn fail(why: &str) -> ! {
    eprintln!("folder-upload: {why}");
    std::process::exit(1)
}
