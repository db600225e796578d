//! Hashing a download as it arrives: sha256 for LFS files, the git blob id (sha1 of
//! `blob {size}\0` + content) for the others.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::BlobHash;

/// The running hash of a download, over the bytes written so far.
pub(super) enum BlobHasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl BlobHasher {
    /// A hasher of the kind `expected` names, for a file of `size` bytes.
    pub(super) fn new(expected: &BlobHash, size: u64) -> Self {
        match expected {
            BlobHash::Sha256(_) => BlobHasher::Sha256(Sha256::new()),
            BlobHash::GitSha1(_) => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                BlobHasher::GitSha1(h)
            }
        }
    }

    /// A hasher that has already seen the first `len` bytes of `path` (a partial download).
    pub(super) fn over_prefix(
        expected: &BlobHash,
        size: u64,
        path: &Path,
        len: u64,
    ) -> io::Result<Self> {
        let mut hasher = Self::new(expected, size);
        if len > 0 {
            let mut reader = File::open(path)?.take(len);
            let mut buf = vec![0; 1 << 20];
            let mut seen = 0;
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                seen += n as u64;
            }
            if seen != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "partial file shrank while hashing",
                ));
            }
        }
        Ok(hasher)
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            BlobHasher::Sha256(h) => h.update(data),
            BlobHasher::GitSha1(h) => h.update(data),
        }
    }

    /// The lower-case hex digest.
    pub(super) fn finish(self) -> String {
        match self {
            BlobHasher::Sha256(h) => hex(&h.finalize()),
            BlobHasher::GitSha1(h) => hex(&h.finalize()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_id_matches_git_hash_object() {
        // `printf 'hello\n' | git hash-object --stdin`
        let id = BlobHash::GitSha1("ce013625030ba8dba906f756967f9e9ca394464a".into());
        let mut h = BlobHasher::new(&id, 6);
        h.update(b"hello\n");
        assert_eq!(h.finish(), id.hex());
    }

    #[test]
    fn sha256_over_a_prefix_then_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("part");
        std::fs::write(&path, b"hello world").unwrap();
        let expected = BlobHash::Sha256(String::new());
        let mut h = BlobHasher::over_prefix(&expected, 11, &path, 6).unwrap();
        h.update(b"world");
        assert_eq!(
            h.finish(),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }
}
