//! Files written around the page cache (`O_DIRECT`), for a dataset no task is about to
//! read: the checkpoint of a task whose only reader took its rows live ([`super::live`]).
//! Through the page cache, every byte of such a file takes a new page of memory that
//! nobody reads before it is evicted, and on a virtual machine whose host takes back the
//! memory its guest frees, a new page costs far more than the copy into it (measured here:
//! 444 MB written into a new file in 1.45 s of kernel time through the page cache, 0.08 s
//! around it). A later reader (a retry) reads the file from disk, as any other.
//!
//! How: the bytes are gathered in buffers aligned to [`ALIGN`] and written whole, in
//! order, by a thread of the file's own, so the caller goes on filling the next buffer
//! while the disk takes the last (at most [`IN_FLIGHT`] buffers wait). The last buffer is
//! padded to the alignment and the file cut back to its length. Where the file system
//! refuses `O_DIRECT` (tmpfs), the same file is written through the page cache. What it
//! does not own: what goes into the file ([`super::files`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Alignment of buffers, lengths and offsets of direct writes: a page, which every block
/// device's logical block size divides.
const ALIGN: usize = 4096;

/// Bytes a buffer gathers before it is written.
const CHUNK: usize = 4 << 20;

/// Full buffers waiting for the writing thread, beside the one it writes and the one being
/// filled.
const IN_FLIGHT: usize = 1;

/// A buffer whose usable part, `mem[start..start + CHUNK]`, starts on an [`ALIGN`] boundary.
struct Chunk {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Chunk {
    fn new() -> Chunk {
        let mem = vec![0u8; CHUNK + ALIGN];
        // Exact at run time for byte pointers; never more than ALIGN - 1.
        let start = mem.as_ptr().align_offset(ALIGN).min(ALIGN);
        Chunk { mem, start, len: 0 }
    }

    fn space(&mut self) -> &mut [u8] {
        &mut self.mem[self.start + self.len..self.start + CHUNK]
    }
}

/// A file being written around the page cache. Bytes reach the file as buffers fill and
/// at [`UncachedFile::finish`]; `flush` does nothing (a direct write must start on an
/// aligned offset, so only whole buffers go out before the end).
pub struct UncachedFile {
    filling: Chunk,
    full: Option<mpsc::SyncSender<Chunk>>,
    empty: mpsc::Receiver<Chunk>,
    writer: Option<JoinHandle<io::Result<()>>>,
}

impl UncachedFile {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> io::Result<UncachedFile> {
        let open = |flags| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match open(libc::O_DIRECT) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(0)?, false),
            Err(e) => return Err(e),
        };
        let (full_tx, full_rx) = mpsc::sync_channel::<Chunk>(IN_FLIGHT);
        let (empty_tx, empty_rx) = mpsc::channel::<Chunk>();
        let writer = std::thread::Builder::new()
            .name("cauce-uncached".into())
            .spawn(move || write_chunks(file, direct, full_rx, empty_tx))?;
        Ok(UncachedFile {
            filling: Chunk::new(),
            full: Some(full_tx),
            empty: empty_rx,
            writer: Some(writer),
        })
    }

    /// Hands the buffer being filled to the writing thread and takes an empty one.
    fn send(&mut self) -> io::Result<()> {
        let next = self.empty.try_recv().unwrap_or_else(|_| Chunk::new());
        let chunk = std::mem::replace(&mut self.filling, next);
        let sent = self.full.as_ref().map(|tx| tx.send(chunk).is_ok());
        if sent != Some(true) {
            // The thread stopped on an error: it is the answer.
            return Err(self
                .stop()
                .err()
                .unwrap_or_else(|| io::Error::other("the file's writing thread stopped")));
        }
        Ok(())
    }

    /// Waits for the writing thread to end; its error, if it had one.
    fn stop(&mut self) -> io::Result<()> {
        self.full = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the file's writing thread panicked")),
            None => Ok(()),
        }
    }

    /// Writes what is left and waits until every byte is in the file.
    pub fn finish(mut self) -> io::Result<()> {
        if self.filling.len > 0 {
            self.send()?;
        }
        self.stop()
    }
}

impl Write for UncachedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let space = self.filling.space();
        let n = space.len().min(buf.len());
        space[..n].copy_from_slice(&buf[..n]);
        self.filling.len += n;
        if self.filling.len == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for UncachedFile {
    fn drop(&mut self) {
        // Not finished (an error on the way): the thread ends with what it was given.
        let _ = self.stop();
    }
}

/// The writing thread: every buffer but the last is whole, so each write starts on an
/// aligned offset; the last is padded with zeros, and the file cut back after it.
fn write_chunks(
    mut file: File,
    direct: bool,
    full: mpsc::Receiver<Chunk>,
    empty: mpsc::Sender<Chunk>,
) -> io::Result<()> {
    let mut length = 0u64;
    for mut chunk in full {
        let end = chunk.start + chunk.len;
        let padded = if direct {
            chunk.start + chunk.len.next_multiple_of(ALIGN)
        } else {
            end
        };
        chunk.mem[end..padded].fill(0);
        file.write_all(&chunk.mem[chunk.start..padded])?;
        length += chunk.len as u64;
        chunk.len = 0;
        let _ = empty.send(chunk);
    }
    if direct {
        file.set_len(length)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_in_odd_pieces_come_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        for total in [0usize, 1, ALIGN, CHUNK - 1, CHUNK, 2 * CHUNK + 12_345] {
            let path = dir.path().join(format!("f{total}"));
            let want: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
            let mut f = UncachedFile::create(&path).expect("created");
            for piece in want.chunks(7_777) {
                f.write_all(piece).expect("written");
            }
            f.flush().expect("flush");
            f.finish().expect("finished");
            assert_eq!(std::fs::read(&path).expect("read"), want, "{total} bytes");
        }
    }

    #[test]
    fn a_file_that_cannot_be_created_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = UncachedFile::create(&dir.path().join("missing/f")).err();
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::NotFound));
    }
}
