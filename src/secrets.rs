//! Secret values (from `${VAR}` references and the project's `.env`) and their redaction
//! from logs, reports, errors and API output. It owns the set of values; it does not read
//! the environment itself (the template engine and the project loader add to it).

use aho_corasick::{AhoCorasick, MatchKind};
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Values shorter than this are not treated as secrets: masking `1` or `on` everywhere
/// would destroy logs and protect nothing.
pub const MIN_SECRET_LEN: usize = 4;

/// A redactor and the secrets version it was built for.
type Versioned = (u64, Arc<Redactor>);

/// The set of secret values known to this process; cheap to clone, shared.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: Arc<RwLock<BTreeSet<String>>>,
    version: Arc<std::sync::atomic::AtomicU64>,
    /// The redactor of the values known at `.0`, built once per version and shared by
    /// every log file and API answer.
    cached: Arc<std::sync::Mutex<Option<Versioned>>>,
}

impl Secrets {
    /// Registers a value as secret.
    pub fn add(&self, value: &str) {
        if value.len() >= MIN_SECRET_LEN {
            if let Ok(mut v) = self.values.write() {
                if v.insert(value.to_string()) {
                    self.version
                        .fetch_add(1, std::sync::atomic::Ordering::Release);
                }
            }
        }
    }

    /// Changes whenever a new secret is added; lets holders of a [`Redactor`] rebuild it.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A redactor for the values known now (rebuilt only when a new secret was added).
    pub fn redactor(&self) -> Arc<Redactor> {
        let version = self.version();
        let build = || {
            let values: Vec<String> = self
                .values
                .read()
                .map(|v| v.iter().cloned().collect())
                .unwrap_or_default();
            Arc::new(Redactor::new(values))
        };
        match self.cached.lock() {
            Ok(mut cached) => match &*cached {
                Some((v, r)) if *v == version => Arc::clone(r),
                _ => {
                    let r = build();
                    *cached = Some((version, Arc::clone(&r)));
                    r
                }
            },
            Err(_) => build(),
        }
    }

    /// Masks every known secret in `text`.
    pub fn redact(&self, text: &str) -> String {
        self.redactor().redact_str(text)
    }

    /// Masks every known secret in the strings of a JSON value (a task's output).
    pub fn redact_json(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        let r = self.redactor();
        fn walk(v: &Value, r: &Redactor) -> Value {
            match v {
                Value::String(s) => Value::String(r.redact_str(s)),
                Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, r)).collect()),
                Value::Object(o) => Value::Object(
                    o.iter()
                        .map(|(k, x)| (r.redact_str(k), walk(x, r)))
                        .collect(),
                ),
                other => other.clone(),
            }
        }
        walk(value, &r)
    }
}

/// Replaces secret values in text and in byte streams.
#[derive(Debug, Clone)]
pub struct Redactor {
    matcher: Option<AhoCorasick>,
    values: Vec<Vec<u8>>,
    max_len: usize,
}

impl Redactor {
    /// A redactor for these values.
    pub fn new(values: Vec<String>) -> Redactor {
        let max_len = values.iter().map(|v| v.len()).max().unwrap_or(0);
        let matcher = if values.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&values)
                .ok()
        };
        Redactor {
            matcher,
            values: values.into_iter().map(String::into_bytes).collect(),
            max_len,
        }
    }

    /// The length of the longest end of `text` that is the start of a secret: bytes that
    /// must wait for the next chunk. Output that cannot begin a secret is not held back, so
    /// a followed log shows each line as soon as it is written.
    fn pending_prefix(&self, text: &[u8]) -> usize {
        let longest = self.max_len.saturating_sub(1).min(text.len());
        (1..=longest)
            .rev()
            .find(|&k| {
                let tail = &text[text.len() - k..];
                self.values.iter().any(|v| v.starts_with(tail))
            })
            .unwrap_or(0)
    }

    /// Masks secrets in a string.
    pub fn redact_str(&self, text: &str) -> String {
        match &self.matcher {
            Some(m) => m.replace_all(text, &vec![MASK; m.patterns_len()]),
            None => text.to_string(),
        }
    }

    /// Redacts a stream chunk by chunk. `carry` holds bytes kept back between calls so that
    /// a secret split across two chunks is still found; pass `eof = true` on the last call.
    pub fn redact_chunk(&self, carry: &mut Vec<u8>, chunk: &[u8], eof: bool, out: &mut Vec<u8>) {
        let Some(m) = &self.matcher else {
            out.extend_from_slice(carry);
            out.extend_from_slice(chunk);
            carry.clear();
            return;
        };
        carry.extend_from_slice(chunk);
        let keep = if eof { 0 } else { self.pending_prefix(carry) };
        let cut = carry.len().saturating_sub(keep);
        let mut pos = 0;
        for found in m.find_iter(carry.as_slice()) {
            if found.start() >= cut {
                break;
            }
            out.extend_from_slice(&carry[pos..found.start()]);
            out.extend_from_slice(MASK.as_bytes());
            pos = found.end();
        }
        let emit_to = pos.max(cut);
        out.extend_from_slice(&carry[pos..emit_to]);
        carry.drain(..emit_to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_values_in_text() {
        let s = Secrets::default();
        s.add("hunter22");
        s.add("ab"); // too short to be treated as a secret
        assert_eq!(s.redact("pw=hunter22 ab"), "pw=*** ab");
    }

    #[test]
    fn masks_a_secret_split_across_chunks() {
        let r = Redactor::new(vec!["s3cr3t-token".into()]);
        let input = b"before s3cr3t-token middle s3cr3t-token after";
        for split in 1..input.len() {
            let mut carry = Vec::new();
            let mut out = Vec::new();
            r.redact_chunk(&mut carry, &input[..split], false, &mut out);
            r.redact_chunk(&mut carry, &input[split..], true, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                "before *** middle *** after",
                "split at {split}"
            );
        }
    }

    #[test]
    fn holds_back_only_what_could_begin_a_secret() {
        let r = Redactor::new(vec!["s3cr3t-token".into()]);
        let mut carry = Vec::new();
        let mut out = Vec::new();
        r.redact_chunk(&mut carry, b"line-1\n", false, &mut out);
        assert_eq!(out, b"line-1\n", "nothing here can start a secret");
        out.clear();
        r.redact_chunk(&mut carry, b"line-2 s3cr", false, &mut out);
        assert_eq!(out, b"line-2 ");
        out.clear();
        r.redact_chunk(&mut carry, b"3t-token!", true, &mut out);
        assert_eq!(out, b"***!");
    }
}
