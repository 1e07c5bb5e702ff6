//! What the fuzz targets share: a reader that hands its input out in pieces of
//! sizes the fuzzer chooses, so that every way a peer can split its bytes across
//! reads is tried, not just one read of everything.

use std::io::{self, Read};

pub struct Pieces<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
}

impl<'a> Pieces<'a> {
    /// The first byte says how many of the next bytes are piece sizes (0 to 7); the
    /// rest is the stream. No sizes: one read takes as much as the buffer holds.
    pub fn split(input: &'a [u8]) -> Pieces<'a> {
        let (count, rest) = match input.split_first() {
            Some((&k, rest)) => (usize::from(k % 8).min(rest.len()), rest),
            None => (0, input),
        };
        let (sizes, data) = rest.split_at(count);
        Pieces {
            data,
            sizes,
            turn: 0,
        }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.data
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = if self.sizes.is_empty() {
            usize::MAX
        } else {
            usize::from(self.sizes[self.turn % self.sizes.len()]).max(1)
        };
        self.turn += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
