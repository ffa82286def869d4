//! The service a node reports to: one URL, or several replicas' URLs. The
//! node uses one at a time and moves to the next when it stops answering;
//! the replicas share one repository, so any of them takes its reports.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The service's URLs and the one in use.
#[derive(Clone, Debug)]
pub struct ServiceUrls {
    urls: Arc<[String]>,
    current: Arc<AtomicUsize>,
}

impl ServiceUrls {
    /// From `URL[,URL…]`.
    pub fn parse(list: &str) -> ServiceUrls {
        let urls: Arc<[String]> = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        ServiceUrls {
            urls,
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The URL in use.
    pub fn current(&self) -> String {
        let n = self.urls.len().max(1);
        self.urls
            .get(self.current.load(Ordering::Relaxed) % n)
            .cloned()
            .unwrap_or_default()
    }

    /// `url` did not answer: the next one is used from now on (unless
    /// another caller moved on already).
    pub fn failed(&self, url: &str) {
        if self.urls.len() > 1 && self.current() == url {
            self.current.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(from = %url, to = %self.current(), "the service did not answer; reporting to the next replica");
        }
    }

    /// All of them, as given.
    pub fn all(&self) -> &[String] {
        &self.urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_on_once_per_failure_and_wraps() {
        let s = ServiceUrls::parse("https://a:1/, https://b:2");
        assert_eq!(s.all(), ["https://a:1", "https://b:2"]);
        assert_eq!(s.current(), "https://a:1");
        s.failed("https://a:1");
        s.failed("https://a:1");
        assert_eq!(s.current(), "https://b:2", "a stale failure moves nothing");
        s.failed("https://b:2");
        assert_eq!(s.current(), "https://a:1");
        let one = ServiceUrls::parse("https://only");
        one.failed("https://only");
        assert_eq!(one.current(), "https://only");
    }
}
