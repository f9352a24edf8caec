//! CRI container log files: each line is `<RFC 3339 nano time> <stream> <F|P> <text>`
//! (as the kubelet and containerd write them). The shim writes them; `logs` reads them
//! back with tail, since, timestamps, limit and follow. A log that outgrows its limit
//! is rotated to `<name>.1` (one rotated file kept, as small disks need) and a
//! follower moves on to the new file.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Size at which a container's log rotates (the kubelet's default).
pub const DEFAULT_LOG_MAX: u64 = 10 << 20;

/// Longest line written at once; longer output is split into partial (`P`) lines.
pub const MAX_LINE: usize = 16 * 1024;

/// Now as `2026-11-21T22:40:01.123456789Z`.
pub fn now_rfc3339_nano() -> String {
    let now = jiff::Timestamp::now();
    format!(
        "{}.{:09}Z",
        now.strftime("%Y-%m-%dT%H:%M:%S"),
        now.subsec_nanosecond()
    )
}

/// Writes CRI lines for one stream of output; keeps an unfinished line until its end.
pub struct LineWriter {
    stream: &'static str,
    pending: Vec<u8>,
}

impl LineWriter {
    /// A writer tagging lines with `stream` (`stdout` or `stderr`).
    pub fn new(stream: &'static str) -> LineWriter {
        LineWriter {
            stream,
            pending: Vec::new(),
        }
    }

    /// Feeds raw output; complete lines are written to `out` at once.
    pub fn feed(&mut self, data: &[u8], out: &mut impl Write) -> std::io::Result<()> {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let line = std::mem::take(&mut self.pending);
            self.write_line(&line, b'F', out)?;
        }
        self.pending.extend_from_slice(rest);
        while self.pending.len() >= MAX_LINE {
            let tail = self.pending.split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.pending, tail);
            self.write_line(&line, b'P', out)?;
        }
        Ok(())
    }

    /// Writes what is left (output that ended without a newline) as a partial line.
    pub fn flush(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.write_line(&line, b'P', out)?;
        }
        Ok(())
    }

    fn write_line(&self, text: &[u8], tag: u8, out: &mut impl Write) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(text.len() + 48);
        buf.extend_from_slice(now_rfc3339_nano().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(self.stream.as_bytes());
        buf.push(b' ');
        buf.push(tag);
        buf.push(b' ');
        buf.extend_from_slice(text);
        buf.push(b'\n');
        // One write per line: lines of both streams never interleave.
        out.write_all(&buf)
    }
}

/// A log file that rotates to `<path>.1` once it holds more than `max_bytes`.
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl RotatingLog {
    /// Opens (appends to) `path`; 0 means no limit.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<RotatingLog> {
        let file = File::options().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
        })
    }

    /// The rotated file of `path`.
    pub fn rotated(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, Self::rotated(&self.path))?;
        self.file = File::options().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.size += n as u64;
        if self.max_bytes > 0 && self.size >= self.max_bytes && buf[..n].ends_with(b"\n") {
            self.rotate()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// One parsed CRI log line.
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub text: &'a [u8],
}

/// Parses a line (without its trailing newline).
pub fn parse(line: &[u8]) -> Option<Line<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(Line {
        time,
        stream,
        partial: tag == b"P",
        text,
    })
}

/// What to read from a log file.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub follow: bool,
    pub timestamps: bool,
    /// -1: all.
    pub tail_lines: i64,
    /// Unix seconds; lines before are skipped (0: none).
    pub since: i64,
    /// 0: no limit.
    pub limit_bytes: i64,
}

/// Renders a line as `kubectl logs` shows it.
fn render(line: &Line<'_>, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(line.time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(line.text);
    if !line.partial {
        out.push(b'\n');
    }
}

fn line_time(line: &Line<'_>) -> i64 {
    line.time
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .unwrap_or(0)
}

/// A blocking reader over a CRI log file; in follow mode it waits for more lines
/// until `done` says the writer has finished.
pub struct LogReader {
    file: BufReader<File>,
    /// Inode of the open file, to notice a rotation.
    inode: u64,
    path: PathBuf,
    opts: ReadOptions,
    buf: Vec<u8>,
    pos: usize,
    sent: i64,
    done: Box<dyn Fn() -> bool + Send>,
    finished: bool,
}

impl LogReader {
    /// Opens `path`; `done` tells a follower that no more lines will come.
    pub fn open(
        path: &Path,
        opts: ReadOptions,
        done: Box<dyn Fn() -> bool + Send>,
    ) -> anyhow::Result<LogReader> {
        let mut file = File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open log {}: {e}", path.display()))?;
        let mut start = 0u64;
        if opts.tail_lines >= 0 {
            start = tail_offset(&mut file, opts.tail_lines as u64)?;
        }
        file.seek(SeekFrom::Start(start))?;
        let inode = std::os::unix::fs::MetadataExt::ino(&file.metadata()?);
        Ok(LogReader {
            file: BufReader::new(file),
            inode,
            path: path.to_path_buf(),
            opts,
            buf: Vec::new(),
            pos: 0,
            sent: 0,
            done,
            finished: false,
        })
    }

    /// Fills `buf` with the next rendered lines; false at the end.
    fn fill(&mut self) -> std::io::Result<bool> {
        let mut raw = Vec::new();
        loop {
            if self.finished {
                return Ok(false);
            }
            raw.clear();
            let n = self.file.read_until(b'\n', &mut raw)?;
            if n > 0 && raw.ends_with(b"\n") {
                raw.pop();
                if let Some(line) = parse(&raw) {
                    if self.opts.since > 0 && line_time(&line) < self.opts.since {
                        continue;
                    }
                    render(&line, self.opts.timestamps, &mut self.buf);
                    return Ok(true);
                }
                continue;
            }
            if n > 0 {
                // An unfinished line at the end of the file: read it again later.
                self.file.seek_relative(-(n as i64))?;
            }
            if !self.opts.follow {
                return Ok(false);
            }
            let done = (self.done)();
            // Written before `done` turned true: one more pass reads the rest.
            let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
            let at = self.file.stream_position()?;
            if done && len <= at {
                self.finished = true;
                return Ok(false);
            }
            if !done {
                // Rotated: what is left of the old file was read; go on with the new one.
                if let Ok(m) = std::fs::metadata(&self.path)
                    && std::os::unix::fs::MetadataExt::ino(&m) != self.inode
                    && let Ok(f) = File::open(&self.path)
                {
                    self.inode = std::os::unix::fs::MetadataExt::ino(&m);
                    self.file = BufReader::new(f);
                    continue;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Read for LogReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.opts.limit_bytes > 0 && self.sent >= self.opts.limit_bytes {
            return Ok(0);
        }
        while self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if !self.fill()? {
                return Ok(0);
            }
        }
        let mut n = out.len().min(self.buf.len() - self.pos);
        if self.opts.limit_bytes > 0 {
            n = n.min((self.opts.limit_bytes - self.sent) as usize);
        }
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.sent += n as i64;
        Ok(n)
    }
}

/// Offset of the start of the last `lines` complete lines of `file`.
fn tail_offset(file: &mut File, lines: u64) -> std::io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    if lines == 0 {
        return Ok(len);
    }
    let mut end = len;
    let mut seen = 0u64;
    let mut chunk = vec![0u8; 8192];
    // Skip a trailing unfinished line's newline search: count newlines from the end.
    let mut first = true;
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        for i in (0..n).rev() {
            if chunk[i] == b'\n' {
                if first && start + i as u64 == len - 1 {
                    first = false;
                    continue;
                }
                first = false;
                seen += 1;
                if seen == lines {
                    return Ok(start + i as u64 + 1);
                }
            } else {
                first = false;
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_log(lines: &[(&'static str, &str)]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for (stream, text) in lines {
            let mut w = LineWriter::new(stream);
            w.feed(text.as_bytes(), f.as_file_mut()).unwrap();
            w.flush(f.as_file_mut()).unwrap();
        }
        f
    }

    fn read_all(path: &Path, opts: ReadOptions) -> String {
        let mut r = LogReader::open(path, opts, Box::new(|| true)).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        s
    }

    fn opts() -> ReadOptions {
        ReadOptions {
            follow: false,
            timestamps: false,
            tail_lines: -1,
            since: 0,
            limit_bytes: 0,
        }
    }

    #[test]
    fn lines_round_trip_with_streams_and_partials() {
        let f = write_log(&[
            ("stdout", "a\nb\n"),
            ("stderr", "err\n"),
            ("stdout", "tail"),
        ]);
        let text = std::fs::read_to_string(f.path()).unwrap();
        let parsed: Vec<_> = text
            .lines()
            .map(|l| {
                let p = parse(l.as_bytes()).unwrap();
                (
                    p.stream.to_string(),
                    p.partial,
                    String::from_utf8(p.text.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            parsed,
            vec![
                ("stdout".into(), false, "a".into()),
                ("stdout".into(), false, "b".into()),
                ("stderr".into(), false, "err".into()),
                ("stdout".into(), true, "tail".into()),
            ]
        );
        assert!(
            text.starts_with("20") && text.as_bytes()[29] == b'Z',
            "{text}"
        );
        assert_eq!(read_all(f.path(), opts()), "a\nb\nerr\ntail");
    }

    #[test]
    fn tail_limit_and_timestamps() {
        let f = write_log(&[("stdout", "1\n2\n3\n4\n")]);
        let tail = ReadOptions {
            tail_lines: 2,
            ..opts()
        };
        assert_eq!(read_all(f.path(), tail), "3\n4\n");
        let zero = ReadOptions {
            tail_lines: 0,
            ..opts()
        };
        assert_eq!(read_all(f.path(), zero), "");
        let limit = ReadOptions {
            limit_bytes: 3,
            ..opts()
        };
        assert_eq!(read_all(f.path(), limit), "1\n2");
        let ts = ReadOptions {
            timestamps: true,
            tail_lines: 1,
            ..opts()
        };
        let out = read_all(f.path(), ts);
        let (time, text) = out.split_once(' ').unwrap();
        assert!(time.parse::<jiff::Timestamp>().is_ok(), "{out}");
        assert_eq!(text, "4\n");
        let future = ReadOptions {
            since: jiff::Timestamp::now().as_second() + 60,
            ..opts()
        };
        assert_eq!(read_all(f.path(), future), "");
    }

    #[test]
    fn logs_rotate_and_followers_move_on() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("0.log");
        let mut log = RotatingLog::open(&path, 200).unwrap();
        let mut w = LineWriter::new("stdout");
        w.feed(b"first\n", &mut log).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let follow = ReadOptions {
            follow: true,
            ..opts()
        };
        let mut r = LogReader::open(
            &path,
            follow,
            Box::new(move || flag.load(std::sync::atomic::Ordering::SeqCst)),
        )
        .unwrap();
        for i in 0..10 {
            w.feed(format!("line {i}\n").as_bytes(), &mut log).unwrap();
        }
        assert!(RotatingLog::rotated(&path).exists(), "no rotation");
        assert!(std::fs::metadata(&path).unwrap().len() < 200);
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        });
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let text = reader.join().unwrap();
        assert!(text.starts_with("first\nline 0\n"), "{text}");
        assert!(text.ends_with("line 9\n"), "{text}");
    }

    #[test]
    fn long_output_is_split_into_partial_lines() {
        let mut out = Vec::new();
        let mut w = LineWriter::new("stdout");
        w.feed(&vec![b'x'; MAX_LINE + 10], &mut out).unwrap();
        w.feed(b"\n", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(parse(lines[0].as_bytes()).unwrap().partial);
        assert_eq!(parse(lines[1].as_bytes()).unwrap().text.len(), 10);
    }
}
