//! Pages of the v1 List RPCs: items in key order, and a page token that names the
//! last key given out, so that a write between two pages never repeats or skips an
//! item it did not touch (as etcd's ranges by key, not Kubernetes' snapshots).
//!
//! A token is bound to its RPC and filter: replayed elsewhere it is refused. It is
//! opaque to callers (hex), not secret.

use tonic::Status;

/// The page size when the request asks for none.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 500;
/// Larger requests are read as this.
pub(crate) const MAX_PAGE_SIZE: usize = 1000;

/// Separates the RPC, the filter and the key in a token, and the key's parts:
/// characters no name may hold.
const FIELD: char = '\u{1f}';
const PART: char = '\u{1e}';

/// One page of a List RPC, as its request asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    rpc: &'static str,
    filter: String,
    size: usize,
    /// The last key of the previous page.
    after: Option<Vec<String>>,
}

impl Page {
    /// Reads `page_size` and `page_token`; a token that this RPC with this filter
    /// did not give out is `INVALID_ARGUMENT`.
    pub(crate) fn of(
        rpc: &'static str,
        filter: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page, Status> {
        let size = match usize::try_from(page_size).unwrap_or(MAX_PAGE_SIZE) {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode(rpc, filter, page_token)?)
        };
        Ok(Page {
            rpc,
            filter: filter.to_owned(),
            size,
            after,
        })
    }

    /// The page of `items` (which come in ascending key order) after the token's
    /// key, each made into what the response carries by `make` (only those on the
    /// page), and the token of the next page (empty after the last).
    pub(crate) fn take<S, T>(
        &self,
        items: impl Iterator<Item = (Vec<String>, S)>,
        mut make: impl FnMut(S) -> T,
    ) -> (Vec<T>, String) {
        let mut page = Vec::with_capacity(self.size.min(64));
        let mut last = None;
        let mut more = false;
        for (key, item) in items {
            if self.after.as_ref().is_some_and(|after| key <= *after) {
                continue;
            }
            if page.len() == self.size {
                more = true;
                break;
            }
            page.push(make(item));
            last = Some(key);
        }
        let next = match (more, last) {
            (true, Some(key)) => encode(self.rpc, &self.filter, &key),
            _ => String::new(),
        };
        (page, next)
    }
}

fn encode(rpc: &str, filter: &str, key: &[String]) -> String {
    let plain = format!("{rpc}{FIELD}{filter}{FIELD}{}", key.join(&PART.to_string()));
    plain.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode(rpc: &str, filter: &str, token: &str) -> Result<Vec<String>, Status> {
    let invalid = |why: &str| {
        flotilla_client::errors::invalid_field(
            "page_token",
            format!(
                "page_token: {why}; pass the next_page_token of the previous {rpc} response, with the same other fields"
            ),
        )
    };
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| invalid("not a page token"))?;
    let plain = String::from_utf8(bytes).map_err(|_| invalid("not a page token"))?;
    let mut fields = plain.splitn(3, FIELD);
    match (fields.next(), fields.next(), fields.next()) {
        (Some(r), Some(f), Some(key)) if r == rpc && f == filter => {
            Ok(key.split(PART).map(str::to_owned).collect())
        }
        (Some(r), Some(_), Some(_)) if r != rpc => {
            Err(invalid(&format!("it was given out by {r}")))
        }
        (Some(_), Some(_), Some(_)) => {
            Err(invalid("the request's filter changed since the first page"))
        }
        _ => Err(invalid("not a page token")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<(Vec<String>, usize)> {
        (0..n).map(|i| (vec![format!("w{i:03}")], i)).collect()
    }

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        let all = keys(7);
        let mut token = String::new();
        let mut seen = Vec::new();
        loop {
            let page = Page::of("ListWorkloads", "", 3, &token).unwrap();
            let (items, next) = page.take(all.clone().into_iter(), |i| i);
            assert!(items.len() <= 3);
            seen.extend(items);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn an_item_added_before_the_cursor_is_not_seen_and_nothing_else_moves() {
        let first = Page::of("ListWorkloads", "", 2, "").unwrap();
        let (items, next) = first.take(keys(5).into_iter(), |i| i);
        assert_eq!(items, [0, 1]);
        // Between the pages, "w000a" is added (before the cursor) and w003 deleted.
        let mut now = keys(5);
        now.insert(1, (vec!["w000a".into()], 99));
        now.retain(|(k, _)| k[0] != "w003");
        let second = Page::of("ListWorkloads", "", 2, &next).unwrap();
        assert_eq!(second.take(now.into_iter(), |i| i).0, [2, 4]);
    }

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(Page::of("L", "", 0, "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(Page::of("L", "", 50_000, "").unwrap().size, MAX_PAGE_SIZE);
    }

    #[test]
    fn multi_part_keys_order_as_tuples() {
        // Names may hold '-', which sorts before '/': the key parts compare one by one.
        let items = vec![
            (vec!["a".to_owned(), "n1".to_owned()], 1),
            (vec!["a".to_owned(), "n2".to_owned()], 2),
            (vec!["a-b".to_owned(), "n1".to_owned()], 3),
        ];
        let (_, next) = Page::of("ListGpus", "", 1, "")
            .unwrap()
            .take(items.clone().into_iter(), |i| i);
        let (page, _) = Page::of("ListGpus", "", 2, &next)
            .unwrap()
            .take(items.into_iter(), |i| i);
        assert_eq!(page, [2, 3]);
    }

    #[test]
    fn a_token_from_elsewhere_or_garbage_is_invalid_and_says_why() {
        let (_, next) = Page::of("ListGpus", "c1", 1, "")
            .unwrap()
            .take(keys(3).into_iter(), |i| i);
        let other_rpc = Page::of("ListWorkloads", "c1", 1, &next).unwrap_err();
        assert!(
            other_rpc.message().contains("given out by ListGpus"),
            "{other_rpc:?}"
        );
        let other_filter = Page::of("ListGpus", "c2", 1, &next).unwrap_err();
        assert!(
            other_filter.message().contains("filter changed"),
            "{other_filter:?}"
        );
        let garbage = Page::of("ListGpus", "c1", 1, "zz").unwrap_err();
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    }
}
