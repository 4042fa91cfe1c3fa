//! The digest of a policy: length-prefixed fields, so no two different
//! policies hash alike.

use sha2::{Digest, Sha256};

/// Writes length-prefixed fields into a hash, so no two inputs hash alike.
pub(super) struct Fields(Sha256);

impl Fields {
    pub(super) fn new() -> Self {
        Fields(Sha256::new())
    }
    pub(super) fn field(&mut self, tag: &str, v: &str) {
        self.bytes(tag, v.as_bytes());
    }
    pub(super) fn bytes(&mut self, tag: &str, v: &[u8]) {
        self.0.update((tag.len() as u32).to_be_bytes());
        self.0.update(tag.as_bytes());
        self.0.update((v.len() as u32).to_be_bytes());
        self.0.update(v);
    }
    pub(super) fn list(&mut self, tag: &str, vs: &[String]) {
        for v in vs {
            self.field(tag, v);
        }
    }
    pub(super) fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}
