//! The framed form of a plugin's answer (contracts.md, "Plugin → gateway"): after
//! the line `UCLOUD-IM/1`, one-line JSON frames: a head, `{"data":N}` followed by N
//! raw bytes, and `{"end":true}`. The gateway reads it; native plugins write it
//! with the writer below (shell plugins print it themselves).

use serde_json::{json, Value};
use std::fmt;
use std::io::{self, BufRead, Write};

/// The first line of a framed answer, and of a WebSocket stream's.
pub const MAGIC: &str = "UCLOUD-IM/1";
/// The second line of a WebSocket stream (`jobs.follow`): its head.
pub const WEBSOCKET_HEAD: &str = r#"{"websocket":true}"#;

/// A frame line longer than this is an error (heads are small).
const MAX_FRAME_LINE: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Head {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// N body bytes follow the line.
    Data(usize),
    End,
}

#[derive(Debug)]
pub enum FrameError {
    Bad(String),
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Bad(why) => write!(f, "the plugin's framed answer is malformed: {why}"),
            FrameError::Io(e) => write!(f, "reading the plugin's answer failed: {e}"),
        }
    }
}

fn bad(why: impl Into<String>) -> FrameError {
    FrameError::Bad(why.into())
}

/// Whether the start of stdout announces the framed form.
pub fn is_framed(start: &[u8]) -> bool {
    start
        .strip_prefix(MAGIC.as_bytes())
        .is_some_and(|rest| rest.starts_with(b"\n") || rest.starts_with(b"\r\n"))
}

/// Reads the next frame line; `Ok(None)` at EOF before a line starts.
pub fn read_frame(r: &mut impl BufRead) -> Result<Option<Frame>, FrameError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().map_err(FrameError::Io)?;
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(bad("the last frame line has no newline"))
            };
        }
        match buf.iter().position(|&c| c == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                r.consume(i + 1);
                break;
            }
            None => {
                let n = buf.len();
                line.extend_from_slice(buf);
                r.consume(n);
            }
        }
        if line.len() > MAX_FRAME_LINE {
            return Err(bad("frame line too long"));
        }
    }
    if line.len() > MAX_FRAME_LINE {
        return Err(bad("frame line too long"));
    }
    parse_frame(&line).map(Some)
}

fn parse_frame(line: &[u8]) -> Result<Frame, FrameError> {
    let Value::Object(map) =
        serde_json::from_slice(line).map_err(|e| bad(format!("frame is not JSON: {e}")))?
    else {
        return Err(bad("frame is not a JSON object"));
    };
    if let Some(n) = map.get("data") {
        let n = n.as_u64().ok_or_else(|| bad("data must be a byte count"))?;
        return usize::try_from(n)
            .map(Frame::Data)
            .map_err(|_| bad("data count too large"));
    }
    if map.get("end") == Some(&Value::Bool(true)) {
        return Ok(Frame::End);
    }
    if let Some(status) = map.get("status") {
        let status = status
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (200..=599).contains(s))
            .ok_or_else(|| bad("status must be a number from 200 to 599"))?;
        let mut headers = Vec::new();
        match map.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for pair in list {
                    match pair.as_array().map(Vec::as_slice) {
                        Some([Value::String(name), Value::String(value)]) => {
                            headers.push((name.clone(), value.clone()))
                        }
                        _ => {
                            return Err(bad("each header must be a [name, value] pair of strings"))
                        }
                    }
                }
            }
            Some(_) => return Err(bad("headers must be a list of [name, value] pairs")),
        }
        return Ok(Frame::Head { status, headers });
    }
    Err(bad("unknown frame (expected status, data or end)"))
}

/// The magic line and the head frame: what starts a framed answer.
pub fn head(status: u16, headers: &[(&str, &str)]) -> String {
    let list: Vec<Value> = headers.iter().map(|(n, v)| json!([n, v])).collect();
    format!("{MAGIC}\n{}\n", json!({"status": status, "headers": list}))
}

/// The line that announces `n` raw bytes.
pub fn data_line(n: u64) -> String {
    format!("{{\"data\":{n}}}\n")
}

/// The frame that ends the answer.
pub const END: &str = "{\"end\":true}\n";

/// A whole framed answer with a small body, written at once.
pub fn write_whole(
    out: &mut impl Write,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut text = head(status, headers).into_bytes();
    text.extend_from_slice(data_line(body.len() as u64).as_bytes());
    text.extend_from_slice(body);
    text.extend_from_slice(END.as_bytes());
    out.write_all(&text).and_then(|()| out.flush())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_whole_framed_answer_parses() {
        let input = b"{\"status\":200,\"headers\":[[\"Content-Type\",\"text/plain\"]]}\n{\"data\":3}\nab\n{\"end\":true}\n";
        let mut r = &input[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some(Frame::Head {
                status: 200,
                headers: vec![("Content-Type".into(), "text/plain".into())]
            })
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some(Frame::Data(3)));
        let mut data = [0u8; 3];
        r.read_exact(&mut data).unwrap();
        assert_eq!(&data, b"ab\n");
        assert_eq!(read_frame(&mut r).unwrap(), Some(Frame::End));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn what_the_writer_writes_the_reader_reads() {
        let mut out = Vec::new();
        write_whole(
            &mut out,
            416,
            &[("Content-Type", "a/b"), ("X", "\"q\"")],
            b"body\n",
        )
        .unwrap();
        assert!(is_framed(&out));
        let mut r = &out[MAGIC.len() + 1..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some(Frame::Head {
                status: 416,
                headers: vec![
                    ("Content-Type".into(), "a/b".into()),
                    ("X".into(), "\"q\"".into())
                ]
            })
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some(Frame::Data(5)));
        let mut data = [0u8; 5];
        r.read_exact(&mut data).unwrap();
        assert_eq!(&data, b"body\n");
        assert_eq!(read_frame(&mut r).unwrap(), Some(Frame::End));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        assert_eq!(data_line(7), "{\"data\":7}\n");
    }

    #[test]
    fn magic_line() {
        assert!(is_framed(b"UCLOUD-IM/1\n{"));
        assert!(is_framed(b"UCLOUD-IM/1\r\n"));
        assert!(!is_framed(b"UCLOUD-IM/10\n"));
        assert!(!is_framed(b"{\"a\":1}"));
    }

    #[test]
    fn hostile_frames_are_errors() {
        for line in [
            &b"not json\n"[..],
            b"[1]\n",
            b"{\"data\":-1}\n",
            b"{\"data\":\"3\"}\n",
            b"{\"status\":99}\n",
            b"{\"status\":200,\"headers\":[[\"a\"]]}\n",
            b"{\"status\":200,\"headers\":{\"a\":\"b\"}}\n",
            b"{\"what\":1}\n",
            b"{\"end\":true}",
        ] {
            assert!(
                read_frame(&mut &line[..]).is_err(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let long = vec![b' '; MAX_FRAME_LINE + 10];
        assert!(read_frame(&mut &long[..]).is_err());
    }
}
