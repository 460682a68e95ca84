//! The socket source: one `value` row per line received from a TCP server, with a
//! write-ahead log so that a restart loses nothing it had received.
//!
//! A background thread reads lines and appends them to the WAL in
//! `<checkpoint>/sources/<table>/wal-<first line>.log`, handing every burst of lines
//! to the operating system as soon as it is read (so a process crash loses none of
//! them). A line becomes part of an offset only when
//! [`latest_offset`](StreamSource::latest_offset) has fsynced the WAL, and the offset
//! is the number of durable lines. So:
//!
//! - every line millrace read from the socket before a process crash (`kill -9`) is
//!   delivered after the restart, exactly once: lines already in a batch are replayed
//!   from the WAL with that batch, the others go into the next batch. After a machine
//!   crash (power loss), lines not yet fsynced can be lost, but never a line that was
//!   part of a batch;
//! - lines the server sent but millrace had not yet written (in the kernel's socket
//!   buffer or the reader's hands at the instant of a `kill -9`) are lost: TCP has no
//!   way to ask the server for them again. A restarted query reconnects and reads what
//!   the server sends from then on.
//!
//! WAL segments start at batch boundaries and are deleted once their batch commits.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::json;

use super::options::Options;
use super::{
    DeclaredSource, Offset, SourceArgs, SourceBatch, SourceDefinition, StreamDef, StreamSource,
    no_columns,
};
use crate::error::{Error, Result};

/// The fixed schema of the socket source: `value VARCHAR`.
pub fn socket_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "value",
        DataType::Utf8,
        false,
    )]))
}

/// The write-ahead log of received lines, shared with the reader thread.
struct Wal {
    dir: PathBuf,
    writer: BufWriter<File>,
    /// Line number of the first line kept in `lines`.
    floor: u64,
    /// Lines from `floor` on, received so far (durable or not yet).
    lines: Vec<String>,
    /// Line numbers at which WAL segments start, ascending.
    segments: Vec<u64>,
    /// Why the connection ended, if it did.
    closed: Option<String>,
}

impl Wal {
    fn segment_path(dir: &Path, first_line: u64) -> PathBuf {
        dir.join(format!("wal-{first_line:020}.log"))
    }

    fn count(&self) -> u64 {
        self.floor + self.lines.len() as u64
    }

    /// Reads back every complete line of every segment; cuts a torn last line.
    fn open(dir: &Path) -> Result<Wal> {
        let mut segments: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir).map_err(Error::io(dir))? {
            // A listing error is an error: skipping a segment would lose its lines.
            let name = entry.map_err(Error::io(dir))?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_prefix("wal-")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse().ok())
            {
                segments.push(first);
            }
        }
        segments.sort_unstable();
        let floor = segments.first().copied().unwrap_or(0);
        let mut lines = Vec::new();
        for first in &segments {
            let path = Self::segment_path(dir, *first);
            let bytes = crate::checkpoint::read_file(&path)?.ok_or_else(|| {
                Error::Checkpoint(format!(
                    "socket WAL segment {} vanished while it was being read",
                    path.display()
                ))
            })?;
            let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            if complete < bytes.len() {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(Error::io(&path))?;
                file.set_len(complete as u64).map_err(Error::io(&path))?;
            }
            if floor + lines.len() as u64 != *first {
                return Err(Error::Checkpoint(format!(
                    "socket WAL segment {} does not follow line {}: the checkpoint is damaged",
                    path.display(),
                    floor + lines.len() as u64
                )));
            }
            lines.extend(
                String::from_utf8_lossy(&bytes[..complete])
                    .lines()
                    .map(str::to_string),
            );
        }
        let count = floor + lines.len() as u64;
        // New lines always go to a fresh segment.
        let path = Self::segment_path(dir, count);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        if segments.last() != Some(&count) {
            segments.push(count);
        }
        Ok(Wal {
            dir: dir.to_path_buf(),
            writer: BufWriter::new(file),
            floor,
            lines,
            segments,
            closed: None,
        })
    }

    fn append(&mut self, line: String) -> std::io::Result<()> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        self.lines.push(line);
        Ok(())
    }

    /// Makes every received line durable and starts a new segment; returns the count.
    fn sync_and_rotate(&mut self) -> Result<u64> {
        let path = Self::segment_path(&self.dir, *self.segments.last().unwrap_or(&0));
        self.writer.flush().map_err(Error::io(&path))?;
        self.writer.get_ref().sync_all().map_err(Error::io(&path))?;
        let count = self.count();
        if self.segments.last() != Some(&count) {
            let next = Self::segment_path(&self.dir, count);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&next)
                .map_err(Error::io(&next))?;
            self.writer = BufWriter::new(file);
            self.segments.push(count);
            crate::checkpoint::sync_dir(&self.dir)?;
        }
        Ok(count)
    }

    /// Forgets lines before `end`, deleting segments that hold only such lines.
    fn release(&mut self, end: u64) -> Result<()> {
        while self.segments.len() > 1 && self.segments[1] <= end {
            let first = self.segments.remove(0);
            let path = Self::segment_path(&self.dir, first);
            fs::remove_file(&path).map_err(Error::io(&path))?;
            let drop = (self.segments[0] - self.floor) as usize;
            self.lines.drain(..drop.min(self.lines.len()));
            self.floor = self.segments[0];
        }
        Ok(())
    }
}

/// A socket source opened for one query.
///
/// Dropping it (the query ended: `STOP QUERY`, a failure, the end of an
/// `available_now` run) closes the connection and waits for the reader thread, so
/// a restarted query in the same process is the only writer of its WAL.
pub struct SocketSource {
    address: String,
    wal: Arc<Mutex<Wal>>,
    bound: Option<u64>,
    /// A handle on the reader's connection, to shut it down when the query ends.
    connection: TcpStream,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl SocketSource {
    /// Replays the WAL in `state_dir`, then connects to `address` (`host:port`).
    pub fn open(address: &str, state_dir: &Path) -> Result<Self> {
        let wal = Arc::new(Mutex::new(Wal::open(state_dir)?));
        let stream = connect(address)?;
        let connection = stream.try_clone().map_err(|e| {
            Error::Network(format!("cannot share the connection to {address}: {e}"))
        })?;
        let shared = wal.clone();
        let reader = std::thread::Builder::new()
            .name(format!("socket-source-{address}"))
            .spawn(move || read_lines(stream, shared))
            .map_err(|e| Error::Network(format!("cannot start the socket reader: {e}")))?;
        Ok(SocketSource {
            address: address.to_string(),
            wal,
            bound: None,
            connection,
            reader: Some(reader),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wal> {
        self.wal.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for SocketSource {
    fn drop(&mut self) {
        // Wakes the reader from its blocking read (it sees the end of the stream),
        // then waits until it has written its last line and let go of the WAL.
        let _ = self.connection.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn connect(address: &str) -> Result<TcpStream> {
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| {
            Error::Network(format!(
                "socket source address '{address}' is not a valid host:port: {e}"
            ))
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Network(format!(
        "cannot connect to socket source {address}: {}; start the server first (e.g. `nc -lk {}`)",
        last.map_or("no address".to_string(), |e| e.to_string()),
        address.rsplit(':').next().unwrap_or("9999")
    )))
}

fn read_lines(stream: TcpStream, wal: Arc<Mutex<Wal>>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let reason = loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break "the server closed the connection".to_string(),
            Ok(_) => {
                if buf.last() != Some(&b'\n') {
                    break "the server closed the connection mid-line".to_string();
                }
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                let mut wal = wal.lock().unwrap_or_else(|p| p.into_inner());
                // Hand each burst of lines to the OS as soon as it is read, so a process
                // crash cannot lose a received line; fsync waits for the next batch.
                let written = wal.append(line).and_then(|_| {
                    if reader.buffer().is_empty() {
                        wal.writer.flush()
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = written {
                    break format!("cannot write the WAL: {e}");
                }
            }
            Err(e) => break format!("read error: {e}"),
        }
    };
    wal.lock().unwrap_or_else(|p| p.into_inner()).closed = Some(reason);
}

fn line_offset(offset: Option<&Offset>) -> Result<u64> {
    match offset {
        None => Ok(0),
        Some(v) => v["lines"]
            .as_u64()
            .ok_or_else(|| Error::Checkpoint(format!("socket source offset {v} has no 'lines'"))),
    }
}

impl StreamSource for SocketSource {
    fn schema(&self) -> SchemaRef {
        socket_schema()
    }

    fn latest_offset(&mut self, start: Option<&Offset>) -> Result<Option<Offset>> {
        let start = line_offset(start)?;
        let durable = self.lock().sync_and_rotate()?;
        let end = self.bound.map_or(durable, |b| durable.min(b)).max(start);
        Ok((end > 0).then(|| json!({ "lines": end })))
    }

    fn prepare_for_available_now(&mut self) -> Result<()> {
        let durable = self.lock().sync_and_rotate()?;
        self.bound = Some(durable);
        Ok(())
    }

    fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<SourceBatch> {
        let (start, end) = (line_offset(start)?, line_offset(Some(end))?);
        let wal = self.lock();
        if start < wal.floor || end > wal.count() {
            return Err(Error::Checkpoint(format!(
                "socket source lines {start}..{end} are not in the WAL (it holds {}..{}); \
                 the checkpoint is damaged",
                wal.floor,
                wal.count()
            )));
        }
        let lines = &wal.lines[(start - wal.floor) as usize..(end - wal.floor) as usize];
        let mut out = SourceBatch::default();
        if !lines.is_empty() {
            let values: StringArray = lines.iter().map(|l| Some(l.as_str())).collect();
            out.batches.push(RecordBatch::try_new(
                socket_schema(),
                vec![Arc::new(values)],
            )?);
        }
        Ok(out)
    }

    fn commit(&mut self, end: &Offset) -> Result<()> {
        let end = line_offset(Some(end))?;
        self.lock().release(end)
    }

    fn describe(&self) -> String {
        let closed = self.lock().closed.clone();
        match closed {
            Some(reason) => format!("TextSocketSource[{}] ({reason})", self.address),
            None => format!("TextSocketSource[{}]", self.address),
        }
    }
}

/// A declared socket table (everything is in its location, `host:port`).
#[derive(Debug)]
pub struct SocketDefinition;

impl SourceDefinition for SocketDefinition {
    fn format_name(&self) -> &'static str {
        "SOCKET"
    }

    fn open(&self, table: &StreamDef, state_dir: &Path) -> Result<Box<dyn StreamSource>> {
        Ok(Box::new(SocketSource::open(&table.location, state_dir)?))
    }
}

/// `STORED AS SOCKET`: one `value` column, `LOCATION '<host>:<port>'`.
pub fn parse(args: SourceArgs<'_>, _options: &mut Options) -> Result<DeclaredSource> {
    let what = args.what;
    no_columns(&args.declared, what, "value VARCHAR")?;
    let address = args.location.ok_or_else(|| {
        Error::Sql(format!(
            "{what} needs LOCATION '<host>:<port>' to connect to"
        ))
    })?;
    if address
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(Error::Sql(format!(
            "LOCATION '{address}' of {what} must be '<host>:<port>'"
        )));
    }
    Ok(DeclaredSource {
        definition: Arc::new(SocketDefinition),
        schema: socket_schema(),
        location: address,
    })
}
