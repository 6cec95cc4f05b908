//! Following the pages of a `flotilla.v1` List RPC to the end.

use std::future::Future;
use tonic::Status;

/// Every item of a paged List: calls `page` with each page token in turn (empty
/// first) until a page comes back without a next token. `page` returns the page's
/// items and its `next_page_token`.
pub async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, Status>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (mut got, next) = page(token.clone()).await?;
        items.append(&mut got);
        if next.is_empty() {
            return Ok(items);
        }
        if next == token {
            return Err(Status::internal(
                "the server gave the same page token twice; stopping instead of looping",
            ));
        }
        token = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_are_followed_until_the_last_and_a_stuck_server_is_an_error() {
        let pages = |token: String| async move {
            Ok(match token.as_str() {
                "" => (vec![1, 2], "a".to_owned()),
                "a" => (vec![3], "b".to_owned()),
                _ => (vec![4], String::new()),
            })
        };
        assert_eq!(all_pages(pages).await.unwrap(), [1, 2, 3, 4]);
        let stuck = |_token: String| async { Ok((vec![0], "same".to_owned())) };
        assert_eq!(
            all_pages(stuck).await.unwrap_err().code(),
            tonic::Code::Internal
        );
    }
}
