//! What the cluster tests share beyond the test kit: a command to replicate, and a
//! check that every member holds the same registry.

use flotilla_core::State;
use flotilla_registry::types::NodeId;
use std::collections::BTreeMap;

pub(crate) use flotilla_testkit::register;

/// Asserts that every server holds an identical registry.
pub(crate) fn assert_identical(states: &BTreeMap<NodeId, State>) {
    let mut it = states.iter();
    if let Some((first_id, first)) = it.next() {
        for (id, s) in it {
            assert!(
                s == first,
                "node {id}'s registry differs from node {first_id}'s"
            );
        }
    }
}
