//! The agent's side of a real registry (servers come from `flotilla_testkit`): a
//! link to them, and a link wrapper that counts what the agent proposes.

use flotilla_client::{FederationClient, RegistryLink};
use flotilla_core::{Command, State};
use flotilla_registry::{RegistryServer, TransportSecurity};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) fn link(addrs: &[SocketAddr]) -> Result<FederationClient, flotilla_client::Error> {
    let servers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    FederationClient::new(
        &servers,
        &TransportSecurity::Plaintext,
        Duration::from_secs(2),
    )
}

/// A real link that counts what was proposed and applied, by command kind.
#[derive(Debug)]
pub(crate) struct Counting<L> {
    inner: Arc<L>,
    applied: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl<L> Clone for Counting<L> {
    fn clone(&self) -> Self {
        Counting {
            inner: self.inner.clone(),
            applied: self.applied.clone(),
        }
    }
}

impl<L: RegistryLink> Counting<L> {
    pub(crate) fn new(inner: L) -> Self {
        Counting {
            inner: Arc::new(inner),
            applied: Arc::default(),
        }
    }

    pub(crate) fn applied(&self, kind: &str) -> u64 {
        self.applied.lock().unwrap().get(kind).copied().unwrap_or(0)
    }
}

impl<L: RegistryLink> RegistryLink for Counting<L> {
    async fn propose(&self, command: &Command) -> Result<(), flotilla_client::Error> {
        let r = self.inner.propose(command).await;
        if r.is_ok() {
            *self
                .applied
                .lock()
                .unwrap()
                .entry(command.kind())
                .or_default() += 1;
        }
        r
    }

    async fn read_federation(
        &self,
    ) -> Result<flotilla_client::FederationLists, flotilla_client::Error> {
        self.inner.read_federation().await
    }

    async fn watch_replicas(
        &self,
        cluster: &str,
        known_version: u64,
        wait: std::time::Duration,
    ) -> Result<(u64, Vec<flotilla_core::PlacedReplica>), flotilla_client::Error> {
        self.inner
            .watch_replicas(cluster, known_version, wait)
            .await
    }
}

/// The registry as the server applied it.
pub(crate) fn state(server: &RegistryServer) -> State {
    (*server.applied().state).clone()
}
