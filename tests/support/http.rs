//! A small blocking HTTP/1.1 client for tests. It speaks just enough HTTP to tell apart what
//! matters here: a body that ended cleanly (final zero-length chunk, or full Content-Length) from
//! one that was cut (connection closed mid-body), and to read a streamed body chunk by chunk.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// `error.message` of an OpenAI-style error body; panics when there is none.
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.message: {}", self.text()))
            .to_string()
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// How the body is delimited.
enum Framing {
    Chunked,
    Length(u64),
    Close,
}

/// A response whose body is read incrementally.
pub struct Stream {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    framing: Framing,
    done: bool,
}

/// Sends one request on a new connection (`Connection: close`).
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    Ok(s)
}

impl Stream {
    /// Sends a request and reads the status line and headers.
    pub fn open(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Self> {
        let s = send(addr, method, path, headers, body)?;
        Self::from_stream(s, method == "HEAD")
    }

    /// POSTs `body` as JSON to `path` and reads the status line and headers.
    pub fn post_json(addr: SocketAddr, path: &str, body: &serde_json::Value) -> io::Result<Self> {
        Self::open(addr, "POST", path, &[], Some(body.to_string().as_bytes()))
    }

    /// POSTs `chat_body(model, stream)` to `CHAT` and reads the status line and headers.
    pub fn chat(addr: SocketAddr, model: &str, stream: bool) -> io::Result<Self> {
        Self::post_json(addr, CHAT, &chat_body(model, stream))
    }

    /// Reads the response head from a connection on which a request was already written.
    pub fn from_stream(s: TcpStream, head_only: bool) -> io::Result<Self> {
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {line:?}"),
                )
            })?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let framing = if find_header(&headers, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            Framing::Chunked
        } else if let Some(n) = find_header(&headers, "content-length").and_then(|v| v.parse().ok())
        {
            Framing::Length(n)
        } else {
            Framing::Close
        };
        let done =
            head_only || status == 204 || status == 304 || matches!(framing, Framing::Length(0));
        Ok(Self {
            reader,
            status,
            headers,
            framing,
            done,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Sets how long one read may block.
    pub fn set_read_timeout(&self, t: Duration) {
        let _ = self.reader.get_ref().set_read_timeout(Some(t));
    }

    /// The next piece of body. `Ok(None)` = the body ended cleanly; `Err` = it was cut short
    /// (connection closed or reset mid-body) or a read timed out.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::Chunked => {
                let mut line = String::new();
                if self.reader.read_line(&mut line)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body cut before its last chunk",
                    ));
                }
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size {line:?}"),
                    )
                })?;
                let mut buf = vec![0; size + 2];
                self.reader.read_exact(&mut buf)?;
                buf.truncate(size);
                if size == 0 {
                    self.done = true;
                    return Ok(None);
                }
                Ok(Some(buf))
            }
            Framing::Length(ref mut left) => {
                let mut buf = vec![0; (*left).min(16384) as usize];
                let n = self.reader.read(&mut buf)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body shorter than Content-Length",
                    ));
                }
                *left -= n as u64;
                self.done = *left == 0;
                buf.truncate(n);
                Ok(Some(buf))
            }
            Framing::Close => {
                let mut buf = vec![0; 16384];
                let n = self.reader.read(&mut buf)?;
                if n == 0 {
                    self.done = true;
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some(buf))
            }
        }
    }

    /// Reads the rest of the body. `Err((partial, e))` when it was cut short.
    pub fn read_to_end(&mut self) -> Result<Vec<u8>, (Vec<u8>, io::Error)> {
        let mut all = Vec::new();
        loop {
            match self.next_chunk() {
                Ok(Some(c)) => all.extend_from_slice(&c),
                Ok(None) => return Ok(all),
                Err(e) => return Err((all, e)),
            }
        }
    }

    /// Reads the rest of a body that must be cut short, panicking with `why` when it ends
    /// cleanly. Returns what arrived, as text, and how it was cut.
    pub fn read_cut(&mut self, why: &str) -> (String, io::Error) {
        let (partial, err) = self.read_to_end().expect_err(why);
        (String::from_utf8_lossy(&partial).into_owned(), err)
    }

    /// Reads until the body received so far contains `needle`; returns everything read.
    pub fn read_until(&mut self, needle: &str) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        while !String::from_utf8_lossy(&all).contains(needle) {
            match self.next_chunk()? {
                Some(c) => all.extend_from_slice(&c),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "body ended without {needle:?}: {}",
                            String::from_utf8_lossy(&all)
                        ),
                    ))
                }
            }
        }
        Ok(all)
    }
}

/// One request, whole response; panics if the body was cut short.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let mut s = Stream::open(addr, method, path, headers, body)?;
    let body = s.read_to_end().map_err(|(_, e)| e)?;
    Ok(Response {
        status: s.status,
        headers: s.headers,
        body,
    })
}

pub fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    request(addr, "GET", path, &[], None)
}

pub fn post_json(addr: SocketAddr, path: &str, body: &serde_json::Value) -> io::Result<Response> {
    request(addr, "POST", path, &[], Some(body.to_string().as_bytes()))
}

/// POSTs `chat_body(model, stream)` to `CHAT` and reads the whole response.
pub fn post_chat(addr: SocketAddr, model: &str, stream: bool) -> io::Result<Response> {
    post_json(addr, CHAT, &chat_body(model, stream))
}

/// The OpenAI chat completions path.
pub const CHAT: &str = "/v1/chat/completions";

/// An OpenAI chat request body for `model`.
pub fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello there gateway"}]
    })
}

/// POSTs a JSON-typed body of `len` spaces to `path`, writing all of it before reading anything
/// (as most SDKs do), then reads the whole answer. Returns how much of the body could be written
/// and the answer's text; a reset while writing or reading shows as a short count or an `Err`.
pub fn upload_then_read(addr: SocketAddr, path: &str, len: usize) -> (usize, io::Result<String>) {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return (0, Err(e)),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    if let Err(e) = s.write_all(head.as_bytes()) {
        return (0, Err(e));
    }
    let chunk = vec![b' '; 64 << 10];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        if s.write_all(&chunk[..n]).is_err() {
            break;
        }
        sent += n;
    }
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    (
        sent,
        read.map(|_| String::from_utf8_lossy(&out).into_owned()),
    )
}
