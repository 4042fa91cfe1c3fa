//! Looking for the caller's token in a stream of bytes (a request body), one
//! chunk at a time: found anywhere, across chunk boundaries, and — for a
//! form body — after percent-decoding. Each step also says from where the
//! stream could still be the beginning of the token: only that suffix (the
//! longest one that is a prefix of the token, raw or decoded, and an escape
//! cut in half) needs to be held back, so a clean stream is held back
//! rarely, and by a few bytes.

use memchr::memmem;

/// What a chunk showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The token is in what has come so far.
    Found,
    /// Not found. Bytes from this stream position on could begin it.
    Clean { hold_from: u64 },
}

pub struct TokenScan {
    finder: memmem::Finder<'static>,
    /// The KMP failure function of the token: the longest proper prefix
    /// that is also a suffix of `token[..=i]`.
    fail: Vec<usize>,
    /// The last `len - 1` bytes seen.
    recent: Vec<u8>,
    /// Bytes seen so far.
    seen: u64,
    form: Option<FormView>,
}

/// The percent-decoded view of a form body, as far as it has come.
struct FormView {
    /// An escape cut by the end of the last chunk, and where it began.
    partial: Vec<u8>,
    partial_pos: u64,
    /// The last `len - 1` decoded bytes, and where each began in the stream.
    tail: Vec<u8>,
    tail_pos: Vec<u64>,
}

impl TokenScan {
    /// `token` must not be empty.
    pub fn new(token: &[u8], form: bool) -> Self {
        let mut fail = vec![0; token.len()];
        let mut k = 0;
        for i in 1..token.len() {
            while k > 0 && token[i] != token[k] {
                k = fail[k - 1];
            }
            if token[i] == token[k] {
                k += 1;
            }
            fail[i] = k;
        }
        let form =
            form.then(|| FormView { partial: Vec::new(), partial_pos: 0, tail: Vec::new(), tail_pos: Vec::new() });
        TokenScan { finder: memmem::Finder::new(token).into_owned(), fail, recent: Vec::new(), seen: 0, form }
    }

    /// The token looked for.
    pub fn token(&self) -> &[u8] {
        self.finder.needle()
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn feed(&mut self, data: &[u8]) -> Step {
        let n = self.finder.needle().len();
        let start = self.seen;
        // Across the seam, then within the chunk.
        let mut window = std::mem::take(&mut self.recent);
        window.extend_from_slice(&data[..data.len().min(n - 1)]);
        if self.finder.find(&window).is_some() || self.finder.find(data).is_some() {
            return Step::Found;
        }
        if data.len() >= n - 1 {
            window.clear();
            window.extend_from_slice(&data[data.len() - (n - 1)..]);
        } else {
            let excess = window.len().saturating_sub(n - 1);
            window.drain(..excess);
        }
        self.seen += data.len() as u64;
        let k = self.prefix_suffix(&window);
        self.recent = window;
        let mut hold_from = self.seen - k as u64;
        if let Some(mut view) = self.form.take() {
            let step = view.feed(data, start, self);
            self.form = Some(view);
            match step {
                Step::Found => return Step::Found,
                Step::Clean { hold_from: h } => hold_from = hold_from.min(h),
            }
        }
        Step::Clean { hold_from }
    }

    /// The length of the longest suffix of `window` that is a proper prefix
    /// of the token (the whole token counts as found elsewhere).
    fn prefix_suffix(&self, window: &[u8]) -> usize {
        let token = self.finder.needle();
        let mut k = 0;
        for &b in window {
            while k > 0 && token[k] != b {
                k = self.fail[k - 1];
            }
            if token[k] == b {
                k += 1;
            }
            if k == token.len() {
                k = self.fail[k - 1];
            }
        }
        k
    }
}

impl FormView {
    /// Decodes `data` (which began at stream position `start`) once, as a
    /// form parser does: `%XX`, `%uXXXX`, `+` as a space.
    fn feed(&mut self, data: &[u8], start: u64, scan: &TokenScan) -> Step {
        let n = scan.finder.needle().len();
        let mut input = std::mem::take(&mut self.partial);
        let input_start = if input.is_empty() { start } else { self.partial_pos };
        input.extend_from_slice(data);
        let at = |i: usize| input_start + i as u64;
        let mut view = std::mem::take(&mut self.tail);
        let mut view_pos = std::mem::take(&mut self.tail_pos);
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if b == b'%' {
                let rest = &input[i..];
                let wide = rest.get(1).is_some_and(|c| *c == b'u' || *c == b'U');
                let want = if wide { 6 } else { 3 };
                if rest.len() < want && rest.iter().skip(if wide { 2 } else { 1 }).all(u8::is_ascii_hexdigit) {
                    // Cut in half by the chunk's end: finish it with the next one.
                    self.partial = rest.to_vec();
                    self.partial_pos = at(i);
                    break;
                }
                if let Some((decoded, used)) = super::credentials::escape(rest) {
                    let bytes = decoded.as_bytes();
                    view.extend_from_slice(bytes);
                    view_pos.extend(std::iter::repeat(at(i)).take(bytes.len()));
                    i += used;
                    continue;
                }
            }
            view.push(if b == b'+' { b' ' } else { b });
            view_pos.push(at(i));
            i += 1;
        }
        if scan.finder.find(&view).is_some() {
            return Step::Found;
        }
        let from = view.len().saturating_sub(n - 1);
        let k = scan.prefix_suffix(&view[from..]);
        let mut hold_from = if k > 0 { view_pos[view.len() - k] } else { u64::MAX };
        if !self.partial.is_empty() {
            hold_from = hold_from.min(self.partial_pos);
        }
        self.tail = view[from..].to_vec();
        self.tail_pos = view_pos[from..].to_vec();
        Step::Clean { hold_from }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"eyJ-SECRET-TOKEN-42";

    fn feed(chunks: &[&[u8]], form: bool) -> Vec<Step> {
        let mut s = TokenScan::new(TOKEN, form);
        chunks.iter().map(|c| s.feed(c)).collect()
    }

    #[test]
    fn found_whole_or_across_chunks() {
        assert_eq!(feed(&[b"a eyJ-SECRET-TOKEN-42 b"], false)[0], Step::Found);
        assert_eq!(feed(&[b"a eyJ-SEC", b"RET-TOKEN-42"], false)[1], Step::Found);
        let bytes: Vec<&[u8]> = b"xxeyJ-SECRET-TOKEN-42".chunks(1).collect();
        assert_eq!(*feed(&bytes, false).last().unwrap(), Step::Found);
    }

    #[test]
    fn only_a_possible_beginning_is_held() {
        // Nothing that could begin the token: nothing held.
        assert_eq!(feed(&[b"hello"], false), vec![Step::Clean { hold_from: 5 }]);
        // "ey" could: held from there.
        assert_eq!(feed(&[b"hello ey"], false), vec![Step::Clean { hold_from: 6 }]);
        // Across chunks: "eyJ-SE" then "C" still could.
        assert_eq!(feed(&[b"a eyJ-SE", b"C"], false)[1], Step::Clean { hold_from: 2 });
        // "eyJ-SEX" no longer can.
        assert_eq!(feed(&[b"a eyJ-SE", b"X"], false)[1], Step::Clean { hold_from: 9 });
    }

    #[test]
    fn form_bodies_are_looked_at_decoded() {
        assert_eq!(feed(&[b"a=1&t=eyJ%2DSECRET%2DTOKEN%2D42"], true)[0], Step::Found);
        assert_eq!(feed(&[b"t=eyJ%2DSECRET%2", b"DTOKEN%2D4", b"2"], true)[2], Step::Found);
        assert_eq!(feed(&[b"t=%u0065yJ-SECRET-TOKEN-42"], true)[0], Step::Found);
        assert_eq!(feed(&[b"t=eyJ%2DSECRET%2DTOKEN%2D42"], false)[0], Step::Clean { hold_from: 27 });
        // An escape cut in half is held from its '%'; an encoded beginning from its start.
        assert_eq!(feed(&[b"a=1&b=%2"], true)[0], Step::Clean { hold_from: 6 });
        assert_eq!(feed(&[b"a=1&t=%65y"], true)[0], Step::Clean { hold_from: 6 });
        assert_eq!(feed(&[b"a=1&b=2"], true)[0], Step::Clean { hold_from: 7 });
    }
}
