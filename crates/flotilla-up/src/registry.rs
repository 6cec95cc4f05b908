//! `up`'s own link to the federation, as its admin: apply settings and workloads,
//! and read the registry for the live view. The fail-over across servers is the
//! client crate's ([`FederationClient`]); `up` adds patience, since it talks to a
//! federation that is still electing its first leader.

use crate::UpError;
use flotilla_client::{FederationClient, RegistryClient, RegistryLink, TransportSecurity};
use flotilla_core::{Command, State};
use std::time::Duration;

/// How long one call may take before the next server is tried.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Rounds over every server a proposal gets before `up` gives up.
const PROPOSE_ROUNDS: usize = 3;
/// The pause between tries while no server can take a write.
const PROPOSE_RETRY: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct Registry {
    link: FederationClient,
    servers: usize,
}

impl Registry {
    pub fn new(servers: &[String], security: &TransportSecurity) -> Result<Registry, UpError> {
        let link = FederationClient::new(servers, security, CALL_TIMEOUT)
            .map_err(|e| UpError::Registry(e.to_string()))?;
        Ok(Registry {
            link,
            servers: servers.len(),
        })
    }

    /// Proposes `command` until a server answers; a refusal by core is an error
    /// that names the command and why.
    pub async fn propose(&mut self, command: &Command) -> Result<(), UpError> {
        self.retrying(command.kind(), async |link| link.propose(command).await)
            .await
    }

    /// A new API key of `tenant` (the whole key, which the registry does not
    /// keep), from the first server that makes one.
    pub async fn create_api_key(&mut self, tenant: &str) -> Result<String, UpError> {
        self.retrying("create_api_key", async |link| {
            link.create_api_key(tenant).await
        })
        .await
    }

    /// `attempt` until a server answers it, for a few rounds over every server; a
    /// refusal by core ends it at once.
    async fn retrying<T>(
        &mut self,
        what: &str,
        mut attempt: impl AsyncFnMut(&FederationClient) -> Result<T, flotilla_client::Error>,
    ) -> Result<T, UpError> {
        let mut last = String::new();
        for _ in 0..self.servers * PROPOSE_ROUNDS {
            match attempt(&self.link).await {
                Ok(answer) => return Ok(answer),
                Err(e @ flotilla_client::Error::Rejected { .. }) => {
                    return Err(UpError::Registry(e.to_string()));
                }
                // Any other failure may be this server's (one restarting answers
                // oddly): the next try goes to another.
                Err(e) => {
                    if !e.is_retryable() {
                        self.link.next_server();
                    }
                    last = e.to_string();
                }
            }
            tokio::time::sleep(PROPOSE_RETRY).await;
        }
        Err(UpError::Registry(format!(
            "no server accepted {what}; last error: {last}"
        )))
    }

    /// The registry as one server holds it (a local read: the view may be a
    /// heartbeat behind, which a live view does not mind; never behind a view
    /// already shown).
    pub async fn read(&mut self) -> Result<State, UpError> {
        let mut last = String::new();
        for _ in 0..self.servers {
            match self.link.read_state().await {
                Ok(state) => return Ok(state),
                Err(e) => {
                    if !e.is_retryable() {
                        self.link.next_server();
                    }
                    last = e.to_string();
                }
            }
        }
        Err(UpError::Registry(format!(
            "no server answered a read; last error: {last}"
        )))
    }

    /// Whether `addr` answers as a member that knows a leader.
    pub async fn member_ready(addr: &str, security: &TransportSecurity) -> bool {
        let Ok(mut client) = RegistryClient::new(addr, security) else {
            return false;
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), client.status()).await,
            Ok(Ok(s)) if s.leader_id != 0
        )
    }
}
